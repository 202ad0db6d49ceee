"""newton_schulz: singular values land in the NS band, singular vectors are kept, and the fast code
matches the float64 reference iteration (nldsl/optim/reference.py)."""
from __future__ import annotations

import pytest
import torch

from nldsl.optim import newton_schulz
from nldsl.optim.reference import newton_schulz_ref
from nldsl.testing import assert_rel_close

SHAPES = {
    "square32": (32, 32),
    "square64": (64, 64),
    "wide": (16, 64),
    "tall": (64, 16),
    "wide_4x": (128, 512),
    "batched": (3, 20, 30),
    "batched_tall": (2, 40, 8),
    "row": (1, 200),
    "column": (200, 1),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_singular_values_pushed_into_band(shape):
    """Each singular value σ maps to p⁵(σ/‖G‖_F) in roughly [0.7, 1.2].

    Five steps lift a normalised σ by at most 3.4445⁵ ≈ 487, so values below 1% of ‖G‖_F (which a random
    square matrix can have) are not expected in the band; rectangular Gaussian matrices have none.
    """
    G = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    out = torch.diagonal(U.mT @ newton_schulz(G) @ Vh.mT, dim1=-2, dim2=-1)  # σ's image, per σ
    resolved = S / torch.linalg.matrix_norm(G, keepdim=True).squeeze(-1) >= 0.01
    assert resolved.float().mean() >= 0.9
    s = out[resolved]
    assert s.min() > 0.65 and s.max() < 1.2, f"singular values in [{s.min():.3f}, {s.max():.3f}]"
    if shape[-1] >= 2 * shape[-2] or shape[-2] >= 2 * shape[-1]:
        assert resolved.all()


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_matches_float64_reference(shape, dtype, tol):
    G = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = newton_schulz(G.to(dtype))
    assert out.dtype == dtype
    assert_rel_close(out, newton_schulz_ref(G), tol, f"NS {shape} {dtype}")


def test_keeps_singular_vectors():
    """NS(G) = U f(S) Vᵀ: in G's singular bases the result is diagonal."""
    G = torch.randn(12, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    core = U.T @ newton_schulz(G) @ Vh.T  # (12, 12)
    off_diag = core - torch.diag(torch.diagonal(core))
    assert off_diag.abs().max() < 1e-10


def test_batched_equals_one_by_one():
    G = torch.randn(4, 9, 5, generator=torch.Generator().manual_seed(3))
    one_by_one = torch.stack([newton_schulz(g) for g in G])
    assert_rel_close(newton_schulz(G), one_by_one, 1e-6, "batched NS")


def test_scale_invariant_and_zero_safe():
    G = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert_rel_close(newton_schulz(1e3 * G), newton_schulz(G), 1e-6, "NS(1000 G)")  # up to eps
    assert torch.equal(newton_schulz(torch.zeros(3, 4)), torch.zeros(3, 4))


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e-6, 1e6, 1e20, 1e30], ids=lambda s: f"{s:.0e}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_any_norm_is_orthogonalised(scale, dtype):
    """Tiny norms are not shrunk by eps, huge ones do not overflow the fp32 norm into zeros."""
    G = torch.randn(2, 6, 9, generator=torch.Generator().manual_seed(7))
    out = newton_schulz((G.double() * scale).to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert_rel_close(out.double(), newton_schulz(G.to(dtype)).double(), 1e-2 if dtype == torch.bfloat16 else 1e-5,
                     f"NS({scale:.0e} G)")


def test_empty_matrix():
    assert newton_schulz(torch.zeros(0, 3)).shape == (0, 3)


def test_bf16_input_runs_in_fp32_on_cpu():
    G = torch.randn(16, 24, generator=torch.Generator().manual_seed(5))
    out = newton_schulz(G.bfloat16())
    assert out.dtype == torch.bfloat16
    assert_rel_close(out, newton_schulz(G.bfloat16().float()), 1e-2, "bf16 NS")


@pytest.mark.parametrize("bad", [torch.zeros(5), torch.tensor(1.0), [[1.0, 2.0]]], ids=["vector", "scalar", "list"])
def test_rejects_non_matrices(bad):
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(bad)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True], ids=["zero", "negative", "float", "bool"])
def test_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        newton_schulz(torch.ones(2, 2), steps=steps)


@pytest.mark.gpu
def test_bf16_on_cuda_close_to_fp32():
    G = torch.randn(4, 256, 512, device="cuda", generator=torch.Generator("cuda").manual_seed(6))
    out = newton_schulz(G.bfloat16())
    assert out.dtype == torch.bfloat16
    assert_rel_close(out.float(), newton_schulz(G), 5e-2, "bf16 NS on CUDA")
