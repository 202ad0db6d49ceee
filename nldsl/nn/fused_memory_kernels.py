"""Triton kernels of the fused memory scan (imported lazily: only where Triton is installed).

One program per (sequence, head) keeps the fast weights of a residual two-layer MLP memory
``M(z) = z + W2 σ(W1 z)`` (σ = SiLU) and its momentum in registers across every chunk of the sequence:
the forward streams k, v, q and the per-token write coefficients, writes the reads, and (for training)
saves the chunk-start states; the backward walks the chunks in reverse from those states, recomputing
each chunk's snapshot pass. The maths is the torch path's (``memory_ops._memory_segment``), written out:

forward, chunk with snapshot ``(W1, W2)``, momentum ``(S1, S2)``, per-token ``γ_t = c_t η_t``, ``ρ_t = b_t η_t``
and per-chunk decays ``(A, s0, Bn)`` (``functional.chunk_decay_weights``)::

    h = k W1ᵀ,  a = σ(h),  e = a W2ᵀ + k − v,  δ = (e W2) ⊙ σ'(h),  y = σ(q W1ᵀ) W2ᵀ + q
    W2' = A W2 + s0 S2 − (γ e)ᵀ a      S2' = Bn S2 − (ρ e)ᵀ a
    W1' = A W1 + s0 S1 − (γ δ)ᵀ k      S1' = Bn S1 − (ρ δ)ᵀ k

``triton.jit`` compiles the kernels for the GPU, or runs them in Triton's CPU interpreter when
``TRITON_INTERPRET=1`` was set before this module was imported (the CPU tests). The forward and the
backward share the snapshot pass (:func:`snapshot_pass`), so the backward recomputes exactly what the
forward wrote with. Loads of k, v, q, dy use int64 offsets (a time stride times T can pass 2³¹).
"""
# ruff: noqa: N803, N806  (kernel arguments are pointers named like the maths)
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mm(a, b, OPDT: tl.constexpr, PREC: tl.constexpr):
    """``a @ b`` on ``OPDT`` operands (bf16/fp16 under autocast, else the fp32/fp64 values) at ``PREC``."""
    return tl.dot(a.to(OPDT), b.to(OPDT), input_precision=PREC)


@triton.jit
def _rows(base, t, stride_t, rd, dtype: tl.constexpr):
    """The ``(C, D)`` tile of tokens ``t`` (int64) of one (sequence, head), in ``dtype``."""
    return tl.load(base + t[:, None] * stride_t + rd[None, :]).to(dtype)


@triton.jit
def snapshot_pass(k, v, w1, w2, OPDT: tl.constexpr, PREC: tl.constexpr):
    """The keys through the snapshot: ``h = k W1ᵀ``, ``s = sigmoid(h)``, ``a = σ(h) = h·s``, ``σ'(h)``,
    ``e = a W2ᵀ + k − v`` and ``p = e W2`` (so ``δ = p ⊙ σ'(h)``)."""
    hk = _mm(k, tl.trans(w1), OPDT, PREC)  # (C, HID)
    sk = tl.sigmoid(hk)
    ak = hk * sk
    dsk = sk * (1.0 + hk * (1.0 - sk))
    e = _mm(ak, tl.trans(w2), OPDT, PREC) + k - v  # (C, D)
    p = _mm(e, w2, OPDT, PREC)  # (C, HID)
    return hk, sk, ak, dsk, e, p


@triton.jit
def scan_fwd(
    K, V, Q, Y, GAM, RHO, DEC, W1, W2, S1, S2, W1_OUT, W2_OUT, S1_OUT, S2_OUT, SAVE,
    H,
    s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_qb, s_qh, s_qt,
    NC: tl.constexpr, C: tl.constexpr, D: tl.constexpr, HID: tl.constexpr,
    MOMENTUM: tl.constexpr, SAVE_STATES: tl.constexpr, PREC: tl.constexpr, OPDT: tl.constexpr, NSAVE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    T = NC * C
    rc = tl.arange(0, C)
    rd = tl.arange(0, D)
    rh = tl.arange(0, HID)
    off_w1 = rh[:, None] * D + rd[None, :]  # (HID, D)
    off_w2 = rd[:, None] * HID + rh[None, :]  # (D, HID)
    MAT = HID * D
    w1 = tl.load(W1 + pid * MAT + off_w1)
    w2 = tl.load(W2 + pid * MAT + off_w2)
    if MOMENTUM:
        s1 = tl.load(S1 + pid * MAT + off_w1)
        s2 = tl.load(S2 + pid * MAT + off_w2)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    q_base = Q + b * s_qb + h * s_qh
    for c in range(NC):
        t = (c * C + rc).to(tl.int64)  # int64: t × the time stride can pass 2³¹
        if SAVE_STATES:
            sbase = SAVE + (pid * NC + c) * NSAVE * MAT
            tl.store(sbase + off_w1, w1)
            tl.store(sbase + MAT + off_w2, w2)
            if MOMENTUM:
                tl.store(sbase + 2 * MAT + off_w1, s1)
                tl.store(sbase + 3 * MAT + off_w2, s2)
        k = _rows(k_base, t, s_kt, rd, w1.dtype)  # (C, D)
        v = _rows(v_base, t, s_vt, rd, w1.dtype)
        q = _rows(q_base, t, s_qt, rd, w1.dtype)
        gam = tl.load(GAM + pid * T + t)  # (C,)
        a_dec = tl.load(DEC + (pid * NC + c) * 3)
        # snapshot pass of the keys: reads, local errors
        hk, sk, ak, dsk, e, p = snapshot_pass(k, v, w1, w2, OPDT, PREC)
        delta = p * dsk  # (C, HID)
        # read of the queries at the snapshot
        hq = _mm(q, tl.trans(w1), OPDT, PREC)
        yq = _mm(hq * tl.sigmoid(hq), tl.trans(w2), OPDT, PREC) + q
        tl.store(Y + pid * T * D + t[:, None] * D + rd[None, :], yq.to(Y.dtype.element_ty))
        # write: decay, momentum, the chunk's summed update
        nw2 = a_dec * w2 - _mm(tl.trans(e * gam[:, None]), ak, OPDT, PREC)  # (D, HID)
        nw1 = a_dec * w1 - _mm(tl.trans(delta * gam[:, None]), k, OPDT, PREC)  # (HID, D)
        if MOMENTUM:
            s0 = tl.load(DEC + (pid * NC + c) * 3 + 1)
            bn = tl.load(DEC + (pid * NC + c) * 3 + 2)
            rho = tl.load(RHO + pid * T + t)
            nw2 += s0 * s2
            nw1 += s0 * s1
            s2 = bn * s2 - _mm(tl.trans(e * rho[:, None]), ak, OPDT, PREC)
            s1 = bn * s1 - _mm(tl.trans(delta * rho[:, None]), k, OPDT, PREC)
        w1 = nw1
        w2 = nw2
    tl.store(W1_OUT + pid * MAT + off_w1, w1)
    tl.store(W2_OUT + pid * MAT + off_w2, w2)
    if MOMENTUM:
        tl.store(S1_OUT + pid * MAT + off_w1, s1)
        tl.store(S2_OUT + pid * MAT + off_w2, s2)


@triton.jit
def scan_bwd(
    K, V, Q, DY, GAM, RHO, DEC, SAVE, DW1, DW2, DS1, DS2, DK, DV, DQ, DGAM, DRHO, DDEC,
    H,
    s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_qb, s_qh, s_qt,
    NC: tl.constexpr, C: tl.constexpr, D: tl.constexpr, HID: tl.constexpr,
    MOMENTUM: tl.constexpr, STOPGRAD: tl.constexpr, PREC: tl.constexpr, OPDT: tl.constexpr, NSAVE: tl.constexpr,
):
    """Reverse pass. ``DW1 … DS2`` hold the adjoints of the final state on entry and the gradients of the
    initial state on exit (in place). Under ``STOPGRAD`` the writes carry no gradient into the snapshot
    pass (k, v, W), as in the torch path; decays, γ, ρ and the reads stay live."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // H
    h = pid % H
    T = NC * C
    rc = tl.arange(0, C)
    rd = tl.arange(0, D)
    rh = tl.arange(0, HID)
    off_w1 = rh[:, None] * D + rd[None, :]
    off_w2 = rd[:, None] * HID + rh[None, :]
    MAT = HID * D
    dw1 = tl.load(DW1 + pid * MAT + off_w1)
    dw2 = tl.load(DW2 + pid * MAT + off_w2)
    if MOMENTUM:
        ds1 = tl.load(DS1 + pid * MAT + off_w1)
        ds2 = tl.load(DS2 + pid * MAT + off_w2)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    q_base = Q + b * s_qb + h * s_qh
    for i in range(NC):
        c = NC - 1 - i
        t = (c * C + rc).to(tl.int64)  # int64: t × the time stride can pass 2³¹
        sbase = SAVE + (pid * NC + c) * NSAVE * MAT
        w1 = tl.load(sbase + off_w1)
        w2 = tl.load(sbase + MAT + off_w2)
        k = _rows(k_base, t, s_kt, rd, w1.dtype)
        v = _rows(v_base, t, s_vt, rd, w1.dtype)
        q = _rows(q_base, t, s_qt, rd, w1.dtype)
        dy = _rows(DY + pid * T * D, t, D, rd, w1.dtype)
        gam = tl.load(GAM + pid * T + t)
        a_dec = tl.load(DEC + (pid * NC + c) * 3)
        # recompute the snapshot pass
        hk, sk, ak, dsk, e, p = snapshot_pass(k, v, w1, w2, OPDT, PREC)
        delta = p * dsk
        # decay coefficients and γ
        tl.store(DDEC + (pid * NC + c) * 3, tl.sum(tl.sum(dw1 * w1, axis=1), axis=0)
                 + tl.sum(tl.sum(dw2 * w2, axis=1), axis=0))
        u2 = _mm(ak, tl.trans(dw2), OPDT, PREC)  # (C, D): rows dW2 a_t
        u1 = _mm(k, tl.trans(dw1), OPDT, PREC)  # (C, HID): rows dW1 k_t
        tl.store(DGAM + pid * T + t, -(tl.sum(e * u2, axis=1) + tl.sum(delta * u1, axis=1)))
        d_e = -gam[:, None] * u2
        d_delta = -gam[:, None] * u1
        d_ak = -_mm(e * gam[:, None], dw2, OPDT, PREC)  # (C, HID)
        dk = -_mm(delta * gam[:, None], dw1, OPDT, PREC)  # (C, D)
        if MOMENTUM:
            s1 = tl.load(sbase + 2 * MAT + off_w1)
            s2 = tl.load(sbase + 3 * MAT + off_w2)
            tl.store(DDEC + (pid * NC + c) * 3 + 1, tl.sum(tl.sum(dw1 * s1, axis=1), axis=0)
                     + tl.sum(tl.sum(dw2 * s2, axis=1), axis=0))
            tl.store(DDEC + (pid * NC + c) * 3 + 2, tl.sum(tl.sum(ds1 * s1, axis=1), axis=0)
                     + tl.sum(tl.sum(ds2 * s2, axis=1), axis=0))
            rho = tl.load(RHO + pid * T + t)
            v2 = _mm(ak, tl.trans(ds2), OPDT, PREC)
            v1 = _mm(k, tl.trans(ds1), OPDT, PREC)
            tl.store(DRHO + pid * T + t, -(tl.sum(e * v2, axis=1) + tl.sum(delta * v1, axis=1)))
            d_e -= rho[:, None] * v2
            d_delta -= rho[:, None] * v1
            d_ak -= _mm(e * rho[:, None], ds2, OPDT, PREC)
            dk -= _mm(delta * rho[:, None], ds1, OPDT, PREC)
        # back through the snapshot pass (the write side)
        if STOPGRAD:
            dk = tl.zeros((C, D), dtype=w1.dtype)
            dv = tl.zeros((C, D), dtype=w1.dtype)
            gw1 = tl.zeros((HID, D), dtype=w1.dtype)
            gw2 = tl.zeros((D, HID), dtype=w1.dtype)
        else:
            dp = d_delta * dsk
            dhk = d_delta * p * (sk * (1.0 - sk) * (2.0 + hk * (1.0 - 2.0 * sk)))  # σ''(h)
            d_e += _mm(dp, tl.trans(w2), OPDT, PREC)
            gw2 = _mm(tl.trans(e), dp, OPDT, PREC) + _mm(tl.trans(d_e), ak, OPDT, PREC)
            dv = -d_e
            d_ak += _mm(d_e, w2, OPDT, PREC)
            dhk += d_ak * dsk
            dk += d_e + _mm(dhk, w1, OPDT, PREC)
            gw1 = _mm(tl.trans(dhk), k, OPDT, PREC)
        # back through the read
        hq = _mm(q, tl.trans(w1), OPDT, PREC)
        sq = tl.sigmoid(hq)
        gw2 += _mm(tl.trans(dy), hq * sq, OPDT, PREC)
        dhq = _mm(dy, w2, OPDT, PREC) * (sq * (1.0 + hq * (1.0 - sq)))
        dq = dy + _mm(dhq, w1, OPDT, PREC)
        gw1 += _mm(tl.trans(dhq), q, OPDT, PREC)
        out = pid * T * D + t[:, None] * D + rd[None, :]
        tl.store(DK + out, dk)
        tl.store(DV + out, dv)
        tl.store(DQ + out, dq)
        # adjoints at the chunk start
        if MOMENTUM:
            s0 = tl.load(DEC + (pid * NC + c) * 3 + 1)
            bn = tl.load(DEC + (pid * NC + c) * 3 + 2)
            ds1 = s0 * dw1 + bn * ds1
            ds2 = s0 * dw2 + bn * ds2
        dw1 = a_dec * dw1 + gw1
        dw2 = a_dec * dw2 + gw2
    tl.store(DW1 + pid * MAT + off_w1, dw1)
    tl.store(DW2 + pid * MAT + off_w2, dw2)
    if MOMENTUM:
        tl.store(DS1 + pid * MAT + off_w1, ds1)
        tl.store(DS2 + pid * MAT + off_w2, ds2)
