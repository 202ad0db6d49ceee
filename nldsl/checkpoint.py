"""Training checkpoints: tensors in safetensors, everything else in a JSON sidecar, written atomically.

A checkpoint is one folder ``<dir>/step-00000100/`` holding ``tensors.safetensors`` (model parameters,
optimizer tensors, in-context state) and ``meta.json`` (spec hash, step, RNG states, optimizer
hyperparameters, data-sampler position, metrics, versions, and the SHA-256 of the tensor file). The
folder is written under a temporary name, fsynced and renamed, so a crash never leaves a half-written
checkpoint that ``latest`` could pick. Loading checks everything it can (files present, hash of the
tensor file, the spec hash) and raises :class:`CheckpointError` with the reason; nothing is unpickled
(no ``torch.load``), so a checkpoint can never run code.

Arbitrary ``state_dict`` trees (optimizers, schedulers, the sampler) are split by :func:`encode_tree`
into JSON with tensor references plus a flat ``{name: tensor}`` dict, and rebuilt exactly by
:func:`decode_tree`; this is what makes a resumed run bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = "nldsl-checkpoint"
FORMAT_VERSION = 1
TENSOR_FILE = "tensors.safetensors"
META_FILE = "meta.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or belongs to another spec; the message says which and where."""


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


# --------------------------------------------------------------------------- tree codec
def encode_tree(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-safe copy of ``obj``; each tensor moves into ``tensors`` under a path-like key.

    Tuples, non-string dict keys (optimizer states are keyed by int), non-finite floats and dtypes are
    tagged so that :func:`decode_tree` rebuilds the very same Python structure.
    """
    if isinstance(obj, Tensor):
        key = prefix
        while key in tensors:
            key += "'"
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if isinstance(obj, (list, tuple)):
        items = [encode_tree(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}
        return {"__dict__": [[encode_tree(k, f"{prefix}/key{i}", tensors), encode_tree(v, f"{prefix}/{k}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return encode_tree(obj.item(), prefix, tensors)
    raise CheckpointError(f"cannot save {type(obj).__name__} at {prefix!r}: only tensors, numbers, strings, "
                          "lists, tuples and dicts go into a checkpoint")


def decode_tree(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`encode_tree`."""
    if isinstance(obj, list):
        return [decode_tree(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise CheckpointError(f"tensor {obj['__tensor__']!r} is referenced in {META_FILE} but missing")
        return tensors[obj["__tensor__"]]
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    if "__tuple__" in obj:
        return tuple(decode_tree(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in obj["__dict__"]}
    return {k: decode_tree(v, tensors) for k, v in obj.items()}


# --------------------------------------------------------------------------- RNG
def _b64(state: Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA once initialised) generator states as JSON-safe data."""
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    rng: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_kind, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return rng


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Put every generator back; CUDA states are skipped when this process has no (or fewer) GPUs."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(rng["torch"]))
    cuda = rng.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


# --------------------------------------------------------------------------- helpers
def fingerprint(text: str | bytes) -> str:
    """Short stable hash (sha256, 16 hex digits) of a spec's canonical text, stored in every checkpoint."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _versions() -> dict[str, str]:
    try:
        from importlib.metadata import version

        nldsl_version = version("nldsl")
    except Exception:  # not installed as a distribution (e.g. run from a source tree)
        nldsl_version = "unknown"
    return {"nldsl": nldsl_version, "torch": torch.__version__, "python": platform.python_version()}


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest step first (temporary folders are ignored)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory``, or None when there is none yet."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


# --------------------------------------------------------------------------- save
def _collect(model: nn.Module | Mapping[str, Tensor], optimizers: Mapping[str, Any], context_state: Any,
             sampler: Any, metrics: Any, extra: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors: dict[str, Tensor] = {}
    params = model.state_dict() if isinstance(model, nn.Module) else model
    tree = {
        "model": encode_tree(dict(params), "model", tensors),
        "optimizers": {name: encode_tree(opt.state_dict() if hasattr(opt, "state_dict") else opt,
                                         f"optim/{name}", tensors) for name, opt in optimizers.items()},
        "context_state": encode_tree(context_state, "context", tensors),
        "sampler": encode_tree(sampler.state_dict() if hasattr(sampler, "state_dict") else sampler, "sampler", tensors),
        "metrics": encode_tree(metrics or {}, "metrics", tensors),
        "extra": encode_tree(extra or {}, "extra", tensors),
    }
    return tensors, tree


def _write_files(tmp: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(tmp / TENSOR_FILE))
    _fsync(tmp / TENSOR_FILE)
    meta["tensors"] = {"file": TENSOR_FILE, "sha256": _sha256_file(tmp / TENSOR_FILE), "count": len(tensors)}
    with open(tmp / META_FILE, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)


def save_checkpoint(directory: str | Path, *, step: int, spec_hash: str, model: nn.Module | Mapping[str, Tensor],
                    optimizers: Mapping[str, Any] | None = None, context_state: Any = None, sampler: Any = None,
                    metrics: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                    keep_last: int = 3) -> Path:
    """Write ``<directory>/step-NNNNNNNN`` atomically and keep only the newest ``keep_last`` checkpoints.

    Call it after the step's optimizer updates and *after* the loss was checked finite, so the newest
    checkpoint is always a good one. ``optimizers`` (and ``sampler``) may hold anything with a
    ``state_dict()`` (optimizers, LR schedulers) or plain state dicts. RNG states are captured here.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an integer >= 1, got {keep_last!r}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tensors, tree = _collect(model, optimizers or {}, context_state, sampler, metrics, extra)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec_hash": spec_hash, "step": step,
            "rng": capture_rng(), "versions": _versions(), **tree}
    tmp = root / f".tmp-step-{step:08d}-{uuid.uuid4().hex[:8]}"
    final = root / f"step-{step:08d}"
    try:
        tmp.mkdir()
        _write_files(tmp, tensors, meta)
        if final.exists():  # re-saving a step: swap the old folder out first
            stale = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OSError, RuntimeError)):
            raise CheckpointError(f"could not write checkpoint {final}: {exc}") from exc
        raise
    _prune(root, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".tmp-step-*"):  # from a crash during an earlier save
        shutil.rmtree(leftover, ignore_errors=True)


# --------------------------------------------------------------------------- load
@dataclass
class Checkpoint:
    """Everything a checkpoint holds, decoded; ``restore`` puts it into live objects."""

    path: Path
    step: int
    spec_hash: str
    model: dict[str, Tensor]
    optimizers: dict[str, Any]
    context_state: Any
    sampler: Any
    metrics: dict[str, Any]
    rng: dict[str, Any]
    versions: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    def restore(self, *, model: nn.Module | None = None, optimizers: Mapping[str, Stateful] | None = None,
                sampler: Stateful | None = None, rng: bool = True) -> None:
        """Load state into fresh objects built from the same spec; mismatches raise CheckpointError."""
        if model is not None:
            try:
                model.load_state_dict(self.model, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{self.path}: model parameters do not fit this model: {exc}") from exc
        for name, opt in (optimizers or {}).items():
            if name not in self.optimizers:
                raise CheckpointError(f"{self.path}: no state for optimizer {name!r} "
                                      f"(saved: {', '.join(sorted(self.optimizers)) or 'none'})")
            try:
                opt.load_state_dict(self.optimizers[name])
            except (ValueError, KeyError, RuntimeError) as exc:
                raise CheckpointError(f"{self.path}: optimizer {name!r} state does not fit: {exc}") from exc
        if sampler is not None and self.sampler is not None:
            sampler.load_state_dict(self.sampler)
        if rng:
            restore_rng(self.rng)


def _resolve(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if path.is_file():  # e.g. the meta.json inside a checkpoint folder
        path = path.parent
    if path.is_dir() and not (path / META_FILE).exists() and _STEP_DIR.match(path.name) is None:
        newest = latest(path)
        if newest is None:
            raise CheckpointError(f"no checkpoint in {path}: it holds no step-* folders")
        return newest
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / META_FILE
    if not file.is_file():
        raise CheckpointError(f"corrupt checkpoint {path}: {META_FILE} is missing")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint {path}: {META_FILE} is not valid JSON ({exc})") from exc
    missing = [k for k in ("format", "spec_hash", "step", "rng", "model", "tensors") if k not in meta]
    if missing or meta.get("format") != FORMAT:
        raise CheckpointError(f"corrupt checkpoint {path}: {META_FILE} is not an nldsl checkpoint "
                              f"(missing {', '.join(missing) or 'format tag'})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer nldsl (format {meta['format_version']}); upgrade nldsl")
    return meta


def _read_tensors(path: Path, meta: Mapping[str, Any], map_location: str, verify: bool) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    file = path / TENSOR_FILE
    if not file.is_file():
        raise CheckpointError(f"corrupt checkpoint {path}: {TENSOR_FILE} is missing")
    if verify and _sha256_file(file) != meta["tensors"].get("sha256"):
        raise CheckpointError(f"corrupt checkpoint {path}: {TENSOR_FILE} does not match the hash in {META_FILE} "
                              "(truncated or modified file)")
    try:
        return load_file(str(file), device=map_location)
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise CheckpointError(f"corrupt checkpoint {path}: cannot read {TENSOR_FILE}: {exc}") from exc


def load_checkpoint(path: str | Path, *, spec_hash: str | None = None, map_location: str = "cpu",
                    verify: bool = True) -> Checkpoint:
    """Read a checkpoint folder, or the newest one inside a checkpoints folder.

    Args:
        spec_hash: the running spec's hash; a checkpoint written for another spec is refused.
        map_location: device for the loaded tensors.
        verify: check the tensor file's SHA-256 (reads it twice; switch off for huge checkpoints).
    """
    path = _resolve(Path(path))
    meta = _read_meta(path)
    if spec_hash is not None and meta["spec_hash"] != spec_hash:
        raise CheckpointError(f"checkpoint {path} was written for a different spec (hash {meta['spec_hash']}, "
                              f"this spec has {spec_hash}); resume with the spec it came from or start a new run")
    tensors = _read_tensors(path, meta, map_location, verify)
    return Checkpoint(
        path=path, step=int(meta["step"]), spec_hash=meta["spec_hash"],
        model=decode_tree(meta["model"], tensors),
        optimizers=decode_tree(meta.get("optimizers", {}), tensors),
        context_state=decode_tree(meta.get("context_state"), tensors),
        sampler=decode_tree(meta.get("sampler"), tensors),
        metrics=decode_tree(meta.get("metrics", {}), tensors),
        rng=meta["rng"], versions=meta.get("versions", {}),
        extra=decode_tree(meta.get("extra", {}), tensors),
    )
