"""Language models for the benchmarks: embedding -> N runtime blocks -> RMSNorm -> head, and their steps.

The models of issue 5's table as ``nldsl.build`` makes them of ``examples/*.nl``, assembled by hand from the
runtime's blocks: throughput.py's fallback when the compiler cannot build one, and the CPU smoke path.

* ``baseline``: ``benchmarks/baseline.py``, the hand-written Transformer++ (tied embeddings, no nldsl import);
* ``transformer`` (transformer.nl): ``TransformerBlock`` (RoPE SDPA + SwiGLU), untied head;
* ``titans`` (titans.nl): ``TitansBlock``, depth-2 MLP memory, chunk 64, data-dependent rates;
* ``hope_attention`` (hope_attention.nl): ``HopeAttentionBlock``, attention + 3-level task CMS;
* ``hope`` (hope.nl): ``HopeBlock``, self-modifying Titans (chunks 16 / 64) + 3-level task CMS.

Widths follow what ``nldsl.build`` lowers the examples to: CMS levels of ``mlp`` kind, hidden ``D``, periods
64 / 512 / 2048 tokens, task objective, lr 1e-3; HOPE's memories are ``mlp(depth = 2)`` with hidden ``4·width``
and GELU; the Titans memory has hidden ``1·width``. Task-objective levels train through
:func:`nldsl.nn.surprise.train_segments` (one forward + backward per 64-token segment), so "in-context updates
on" is what a training step measures.

Compile modes of a step (``make_train_step``): ``eager``; ``model`` (the whole LM forward and loss, like the
baseline); ``block`` (each block compiled in place); ``chunk`` (the per-chunk memory update
``memory_ops.memory_segment`` plus every RMSNorm / SwiGLU compiled; chunk loops stay in Python, so the
compiled graphs stay small at any sequence length). ``auto`` = ``model`` without in-context memory
(transformer) and ``chunk`` otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODEL_NAMES = ("baseline", "transformer", "titans", "hope_attention", "hope")
LABELS = {
    "baseline": "Transformer++ hand-written",
    "transformer": "Transformer++ nldsl",
    "titans": "Titans (LMM)",
    "hope_attention": "HOPE-Attention",
    "hope": "HOPE",
}
EXAMPLES = {"transformer": "examples/transformer.nl", "titans": "examples/titans.nl",
            "hope_attention": "examples/hope_attention.nl", "hope": "examples/hope.nl"}
COMPILE_MODES = ("auto", "eager", "model", "block", "chunk")


@dataclass(frozen=True, kw_only=True)
class Size:
    """Model sizes shared by every model of the table (the ~110M-class skeleton of issue 5)."""

    vocab: int = 32000
    dim: int = 768
    layers: int = 12
    heads: int = 12
    cms_hidden: int | None = None
    """Hidden width of each CMS level; None = dim (the examples, parameter-matched to transformer.nl)."""
    cms_periods: tuple[int, ...] = (64, 512, 2048)
    titans_chunk: int = 64
    hope_chunk: int = 64
    """Chunk of HOPE's main memory M_mem."""
    hope_proj_chunk: int = 16
    """Chunk of HOPE's projection memories (k, v, eta, alpha)."""

    @property
    def cms_width(self) -> int:
        return self.cms_hidden or self.dim


PAPER = Size()
TOY = Size(vocab=128, dim=32, layers=1, heads=2, cms_hidden=32, cms_periods=(4, 8, 16), titans_chunk=4, hope_chunk=4,
           hope_proj_chunk=2)
"""CPU smoke size: every code path of PAPER at toy width."""


# ------------------------------------------------------------------------------------------ blocks
def cms_levels(size: Size) -> list:
    from nldsl.nn.cms import CMSLevel

    return [CMSLevel(hidden=size.cms_width, period=p, lr=1e-3, objective="task", kind="mlp")
            for p in size.cms_periods]


def block_config(name: str, size: Size):
    """The block ``Config`` of one model of the table (see the module docstring)."""
    from nldsl.nn import HopeAttentionBlock, HopeBlock, TitansBlock, TransformerBlock

    D, H = size.dim, size.heads
    if name == "transformer":
        return TransformerBlock.Config(dim=D, n_heads=H)
    if name == "titans":
        return TitansBlock.Config(dim=D, n_heads=H, memory_depth=2, chunk_size=size.titans_chunk, lr=0.01,
                                  memory=dict(hidden_mult=1.0))
    if name == "hope_attention":
        return HopeAttentionBlock.Config(dim=D, n_heads=H, cms_levels=cms_levels(size))
    if name == "hope":
        titans = dict(momentum=0.9, dgd=True, conv_size=4, adaptive_q=False, mem_objective="self",
                      hidden_mult=4.0, proj_hidden_mult=4.0, activation="gelu")
        return HopeBlock.Config(dim=D, n_heads=H, chunk_size=size.hope_chunk, proj_chunk_size=size.hope_proj_chunk,
                                titans=titans, cms_levels=cms_levels(size))
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")


class NLLM(nn.Module):
    """``tokens (B, T) -> (logits (B, T, V), state)``; the state is ``{"0": block-0 state, ...}``."""

    def __init__(self, block_cfg, size: Size, tie_embeddings: bool = False):
        super().__init__()
        from nldsl.nn.layers import RMSNorm

        self.size = size
        self.embed = nn.Embedding(size.vocab, size.dim)
        self.blocks = nn.ModuleList(block_cfg.build() for _ in range(size.layers))
        self.norm = RMSNorm(size.dim)
        self.head = nn.Linear(size.dim, size.vocab, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        x = self.embed(tokens)  # (B, T, D)
        new_state = {}
        for i, block in enumerate(self.blocks):
            x, new_state[str(i)] = block(x, None if state is None else state[str(i)])
        return self.head(self.norm(x)), new_state


def build_model(name: str, size: Size = PAPER, device: str | torch.device = "cpu") -> nn.Module:
    """A freshly initialised fp32 model of the table (seeded by the caller)."""
    if name == "baseline":
        from baseline import BaselineConfig, BaselineLM

        model = BaselineLM(BaselineConfig(vocab=size.vocab, dim=size.dim, layers=size.layers, heads=size.heads))
    else:
        model = NLLM(block_config(name, size), size, tie_embeddings=False)
    return model.to(device)


def flops_shape(model: nn.Module, seq: int, batch: int):
    """The :class:`flops.Shape` of a built model (lm.py's or nldsl.build's), read off its modules' configs."""
    import flops
    from nldsl.nn import CMS, NeuralMemory, SelfModifyingTitans
    from nldsl.nn.transformer import CausalSelfAttention

    embed = next(m for m in model.modules() if isinstance(m, nn.Embedding))
    kw = dict(vocab=embed.num_embeddings, dim=embed.embedding_dim, seq=seq, batch=batch)
    mods = list(model.modules())
    layers = [m for m in mods if isinstance(m, (CausalSelfAttention, NeuralMemory, SelfModifyingTitans))]
    if layers:  # the baseline (no nldsl module) keeps the defaults of its own config
        kw.update(layers=len(layers), heads=getattr(layers[0], "n_heads", None) or layers[0].config.n_heads)
    for m in mods:
        if isinstance(m, NeuralMemory):
            c = m.config
            kw.update(titans_chunk=c.chunk_size, memory_depth=c.depth, titans_hidden_mult=c.hidden_mult)
        elif isinstance(m, SelfModifyingTitans):
            c = m.config
            kw.update(hope_chunk=c.chunk_size, hope_proj_chunk=c.proj_chunk_size, memory_depth=c.depth,
                      hope_hidden_mult=c.hidden_mult, proj_heads=c.proj_heads, proj_hidden_mult=c.proj_hidden_mult,
                      n_proj_memories=len(m.names))
        elif isinstance(m, CMS):
            kw.update(cms_hidden=m.levels[0].hidden, cms_periods=tuple(lv.period or 0 for lv in m.levels))
    if hasattr(model, "cfg"):  # the hand-written baseline
        kw.update(layers=model.cfg.layers, heads=model.cfg.heads)
    return flops.Shape(**kw)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ------------------------------------------------------------------------------------- compiling
def resolve_compile(name: str, mode: str) -> str:
    """``auto`` -> ``model`` for models without in-context memory, ``chunk`` otherwise."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; known: {', '.join(COMPILE_MODES)}")
    if mode != "auto":
        return mode
    return "model" if name in ("baseline", "transformer") else "chunk"


def compile_in_place(model: nn.Module, mode: str, backend: str = "inductor") -> None:
    """``block``: every block compiled; ``chunk``: every RMSNorm and SwiGLU compiled (plus the runtime's compiled chunk updates, ``nldsl.compiling.chunk_context``)."""
    from nldsl.nn.layers import RMSNorm, SwiGLU

    if mode == "block":
        for block in getattr(model, "blocks", None) or model.layers:  # lm.py's NLLM or nldsl's NLModel
            block.compile(backend=backend)
    elif mode == "chunk":
        for module in model.modules():
            if isinstance(module, (RMSNorm, SwiGLU)):
                module.compile(backend=backend)


# ---------------------------------------------------------------------------------- train steps
def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token cross entropy ``(B, T)``, computed in fp32."""
    B, T = targets.shape
    return F.cross_entropy(logits.float().reshape(B * T, -1), targets.reshape(-1), reduction="none").view(B, T)


def make_train_step(model: nn.Module, name: str, compile_mode: str = "auto", backend: str = "inductor",
                    lr: float = 3e-4):
    """``step(batch (B, T+1)) -> loss``: forward (in-context levels on), backward, fused AdamW.

    bf16 autocast on CUDA (fp32 master weights, like the baseline); fp32 on CPU. Models with task-objective
    CMS levels train through ``train_segments``. Returns ``(step, optimizer, mode)``.
    """
    from nldsl.compiling import chunk_context
    from nldsl.nn.surprise import task_segment_len, train_segments

    mode = resolve_compile(name, compile_mode)
    if name == "baseline":
        from baseline import make_train_step as baseline_step

        step, opt = baseline_step(model, lr=lr, compile=mode != "eager")
        return step, opt, ("model" if mode != "eager" else "eager")
    cuda = next(model.parameters()).is_cuda
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=cuda)
    segment = task_segment_len(model)
    compile_in_place(model, mode, backend)
    fwd = torch.compile(model, backend=backend) if mode == "model" and segment is not None else model

    def whole_loss(inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits, _ = fwd(inputs)
        return token_losses(logits, targets).mean()

    loss_fn = torch.compile(whole_loss, backend=backend) if mode == "model" and segment is None else whole_loss
    def step(batch: Tensor) -> Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with chunk_context({"backend": backend} if mode == "chunk" else None):
            if segment is None:
                loss = loss_fn(inputs, targets)
                loss.backward()
            else:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                    loss, _ = train_segments(fwd, inputs, targets, token_losses)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, opt, mode


# ----------------------------------------------------------------------------------- generation
def baseline_cached_forward(model, tokens: Tensor, cache: list | None) -> tuple[Tensor, list]:
    """The hand-written baseline with a KV cache (its own modules and math, positions offset by the cache).

    ``cache``: one ``(k, v)`` pair ``(B, H, t, Dh)`` per block, or None. Returns logits and the longer cache.
    """
    from baseline import _rope

    B, T = tokens.shape
    start = 0 if cache is None else cache[0][0].shape[2]
    x = model.embed(tokens)
    cos, sin = model.rope(start, T, x.dtype)
    new_cache = []
    for i, blk in enumerate(model.blocks):
        D = x.shape[-1]
        q, k, v = blk.qkv(blk.attn_norm(x)).view(B, T, 3, blk.heads, D // blk.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        if cache is not None:
            k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)  # (B, H, start + T, Dh)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new query sees the whole cache
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = _cached_attention(q, k, v)
        new_cache.append((k, v))
        x = x + blk.proj(y.transpose(1, 2).reshape(B, T, D))
        gate, up = blk.gate_up(blk.mlp_norm(x)).chunk(2, dim=-1)
        x = x + blk.down(F.silu(gate) * up)
    return model.head(model.norm(x)), new_cache


def _cached_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Several new queries against a longer cache: query i sees keys ``0 .. Tk − Tq + i``."""
    Tq, Tk = q.shape[-2], k.shape[-2]
    mask = torch.arange(Tk, device=q.device)[None, :] <= torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def lm_step_fn(model: nn.Module, name: str):
    """``fn(tokens, state) -> (logits, state)`` for any model of the table (baseline: the KV cache)."""
    if name == "baseline":
        return lambda tokens, state: baseline_cached_forward(model, tokens, state)
    return lambda tokens, state: model(tokens, state)


def generate(fn, prompt: Tensor, new_tokens: int, on_prefill=None) -> Tensor:
    """Greedy decoding carrying the in-context state: prefill the prompt, then one token per call."""
    logits, state = fn(prompt, None)
    if on_prefill is not None:
        on_prefill()
    token = logits[:, -1:].argmax(-1)  # (B, 1)
    out = [token]
    for _ in range(new_tokens - 1):
        logits, state = fn(token, state)
        token = logits[:, -1:].argmax(-1)
        out.append(token)
    return torch.cat(out, dim=1)


def scaled(size: Size, **changes) -> Size:
    return replace(size, **changes)


def describe(name: str, size: Size) -> str:
    """One line naming the configuration actually measured."""
    if name in ("baseline", "transformer"):
        return f"d={size.dim} L={size.layers} H={size.heads} SwiGLU"
    if name == "titans":
        return f"d={size.dim} L={size.layers} H={size.heads} MLP-mem depth 2, chunk {size.titans_chunk}"
    cms = f"CMS 3x{size.cms_width} @{'/'.join(map(str, size.cms_periods))}"
    if name == "hope_attention":
        return f"d={size.dim} L={size.layers} attn + {cms}"
    return f"d={size.dim} L={size.layers} SMT {size.hope_proj_chunk}/{size.hope_chunk} + {cms}"
