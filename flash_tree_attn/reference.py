"""Pure-PyTorch oracle for flash_tree_attn (any device, differentiable by autograd).

Everything here is written for clarity and for use as ground truth in tests and benchmarks: each sequence is
handled densely on its own (an (Lq, Lk) score matrix per head), never as one total x total matrix.

The visibility rule lives in one place, :func:`visible_mask`. For query row ``i`` and key ``j`` of the same
sequence (local indices), with ``Lq`` queries and ``Lk`` keys:

* ``causal``: ``j <= i + (Lk - Lq)`` (bottom-right aligned, as in FlashAttention 2);
* tree arrays given (they require ``causal=True``): additionally ``start_q[i] <= end_k[j]``.

A query row that sees no key produces a zero output row, a softmax log-sum-exp of ``-inf`` and zero
gradients (never NaN).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["attention_ref", "visible_mask", "count_visible_pairs", "ERROR_ATOL", "error_bound"]

# How far a kernel's result may lie from this oracle (the FlashAttention test convention, used by the kernel tests
# and tools/bound_margin.py): max |kernel - fp32 reference| <= 2 x max |reference in the input precision - fp32
# reference| + ERROR_ATOL[output], a small absolute slack for outputs of order one.
ERROR_ATOL = {"out": 1e-4, "lse": 1e-4, "dq": 1e-3, "dk": 1e-3, "dv": 1e-3}


def error_bound(output: str, err_lowp: float) -> float:
    """The largest max-abs error against the fp32 reference accepted for `output` ("out", "lse", "dq", "dk",
    "dv"), given the max-abs error of the same computation done by the reference in the input precision."""
    return 2 * err_lowp + ERROR_ATOL[output]

# Upper bound on the number of score elements (heads x query rows x keys) materialized at once per sequence.
_MAX_CHUNK_ELEMS = 1 << 26

IndexLike = torch.Tensor | np.ndarray | Sequence[int]


def _fail(msg: str):
    raise ValueError(f"attention_ref: {msg}")


def _as_int_array(name: str, x: IndexLike) -> np.ndarray:
    """A 1-D int64 numpy copy of an integer tensor, array or sequence (ValueError otherwise)."""
    if isinstance(x, torch.Tensor):
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
        if x.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
        return x.detach().to("cpu", torch.int64).numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _as_int_list(name: str, x: IndexLike) -> list:
    return _as_int_array(name, x).tolist()


def _check_cu_seqlens(name: str, cu: list, total: int | None) -> None:
    if len(cu) < 1:
        raise ValueError(f"{name} must have B + 1 >= 1 entries, got 0")
    if cu[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {cu[0]}")
    for b in range(len(cu) - 1):
        if cu[b + 1] < cu[b]:
            raise ValueError(f"{name} must be non-decreasing; {name}[{b + 1}]={cu[b + 1]} < {name}[{b}]={cu[b]}")
    if total is not None and cu[-1] > total:
        raise ValueError(f"{name}[-1]={cu[-1]} exceeds the number of tokens ({total})")


# ----------------------------------------------------------------------------------------------------------
# The visibility rule
# ----------------------------------------------------------------------------------------------------------

def visible_mask(seqlen_q: int, seqlen_k: int, causal: bool, start_q: IndexLike | None = None,
                 end_k: IndexLike | None = None, device=None, rows: tuple[int, int] | None = None
                 ) -> torch.Tensor:
    """Boolean (seqlen_q, seqlen_k) mask of one sequence: ``mask[i, j]`` is True iff query i may attend to key j.

    ``start_q`` (seqlen_q,) and ``end_k`` (seqlen_k,) are that sequence's tree arrays (DFS start index of each
    query token's node, last DFS index in each key token's subtree); they require ``causal=True``. The mask is
    created on ``device``, else on the device of ``start_q`` when it is a tensor, else on the CPU.
    ``rows=(r0, r1)`` returns only query rows r0 .. r1-1 (the arguments still describe the whole sequence).
    """
    seqlen_q, seqlen_k = int(seqlen_q), int(seqlen_k)
    if seqlen_q < 0 or seqlen_k < 0:
        raise ValueError(f"visible_mask: sequence lengths must be >= 0, got seqlen_q={seqlen_q}, seqlen_k={seqlen_k}")
    has_tree = start_q is not None or end_k is not None
    if has_tree:
        if start_q is None or end_k is None:
            raise ValueError("visible_mask: pass both start_q and end_k, or neither")
        if not causal:
            raise ValueError("visible_mask: tree arrays require causal=True (tree attention is causal by construction)")
    if device is None:
        device = start_q.device if isinstance(start_q, torch.Tensor) else torch.device("cpu")
    r0, r1 = (0, seqlen_q) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= r0 <= r1 <= seqlen_q:
        raise ValueError(f"visible_mask: rows={rows} is not a range inside [0, {seqlen_q}]")
    row_idx = torch.arange(r0, r1, device=device).unsqueeze(1)
    cols = torch.arange(seqlen_k, device=device).unsqueeze(0)
    if causal:
        mask = cols <= row_idx + (seqlen_k - seqlen_q)
    else:
        mask = torch.ones(r1 - r0, seqlen_k, dtype=torch.bool, device=device)
    if has_tree:
        s = torch.as_tensor(start_q, device=device)
        e = torch.as_tensor(end_k, device=device)
        if s.dim() != 1 or s.shape[0] != seqlen_q:
            raise ValueError(f"visible_mask: start_q must have shape ({seqlen_q},), got {tuple(s.shape)}")
        if e.dim() != 1 or e.shape[0] != seqlen_k:
            raise ValueError(f"visible_mask: end_k must have shape ({seqlen_k},), got {tuple(e.shape)}")
        if s.is_floating_point() or e.is_floating_point():
            raise ValueError("visible_mask: start_q and end_k must hold integers")
        mask &= s[r0:r1].to(torch.int64).unsqueeze(1) <= e.to(torch.int64).unsqueeze(0)
    return mask


# ----------------------------------------------------------------------------------------------------------
# Counting visible pairs (for FLOP accounting)
# ----------------------------------------------------------------------------------------------------------

def _count_prefix_ge(e_rank: np.ndarray, limit: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """For each query q: #{j < limit[q] : e_rank[j] >= threshold[q]} over the global key array.

    The prefix [0, limit) is split into aligned power-of-two blocks (one per set bit of ``limit``). At level l the
    keys are sorted inside blocks of 2**l, so one searchsorted per level answers every query: O(N log^2 N)
    work in O(log N) vectorized steps, exact for any integer arrays.
    """
    n = e_rank.shape[0]
    out = np.zeros(limit.shape[0], dtype=np.int64)
    if n == 0 or limit.size == 0:
        return out
    width = int(e_rank.max()) + 2  # values of e_rank and threshold both lie in [0, width)
    pos = np.arange(n, dtype=np.int64)
    level = 0
    while (1 << level) <= n:
        has_bit = (limit >> level) & 1 == 1
        if has_bit.any():
            q = np.flatnonzero(has_bit)
            block = limit[q] >> (level + 1) << 1  # block index at this level: the lower bits are the later blocks
            keys = np.sort((pos >> level) * width + e_rank)
            first_ge = np.searchsorted(keys, block * width + threshold[q], side="left")
            out[q] += (block + 1) * (1 << level) - first_ge
        level += 1
    return out


def count_visible_pairs(cu_seqlens_q: IndexLike, cu_seqlens_k: IndexLike, causal: bool,
                        start_q: IndexLike | None = None, end_k: IndexLike | None = None) -> int:
    """Number of (query, key) pairs that :func:`visible_mask` allows, summed over all sequences (not heads).

    Multiply by ``4 * head_dim * num_heads`` for forward matmul FLOPs. Never builds a dense mask: with tree
    arrays each query's count (keys in its causal prefix whose ``end_k >= start_q``) is answered by a
    block-decomposed sorted search over all tokens at once, O(N log^2 N); 35k-token trees take milliseconds.
    The result is exact for any integer arrays, so it also serves for trees that are not well formed.
    """
    cu_q = _as_int_array("cu_seqlens_q", cu_seqlens_q)
    cu_k = _as_int_array("cu_seqlens_k", cu_seqlens_k)
    _check_cu_seqlens("cu_seqlens_q", cu_q.tolist(), None)
    _check_cu_seqlens("cu_seqlens_k", cu_k.tolist(), None)
    if cu_q.shape[0] != cu_k.shape[0]:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length (B + 1), got {cu_q.shape[0]} "
                         f"and {cu_k.shape[0]}")
    has_tree = start_q is not None or end_k is not None
    if has_tree and (start_q is None or end_k is None):
        raise ValueError("count_visible_pairs: pass both start_q and end_k, or neither")
    if has_tree and not causal:
        raise ValueError("count_visible_pairs: tree arrays require causal=True")
    len_q = np.diff(cu_q)
    len_k = np.diff(cu_k)
    if not causal:
        return int((len_q * len_k).sum())
    # Per query: its causal prefix holds n = clip(i + Lk - Lq + 1, 0, Lk) keys.
    seq = np.repeat(np.arange(len_q.shape[0]), len_q)
    local = np.arange(int(cu_q[-1]), dtype=np.int64) - cu_q[:-1][seq]
    n_keys = np.clip(local + (len_k - len_q)[seq] + 1, 0, len_k[seq])
    if not has_tree:
        return int(n_keys.sum())
    sq = _as_int_array("start_q", start_q)
    ek = _as_int_array("end_k", end_k)
    if sq.shape[0] < cu_q[-1] or ek.shape[0] < cu_k[-1]:
        raise ValueError(f"count_visible_pairs: start_q has {sq.shape[0]} entries and end_k {ek.shape[0]}, but "
                         f"cu_seqlens cover {int(cu_q[-1])} queries and {int(cu_k[-1])} keys")
    sq = sq[: int(cu_q[-1])]
    ek = ek[: int(cu_k[-1])]
    # Rank-compress the values so the per-level sort keys stay small.
    uniq = np.unique(ek)
    e_rank = np.searchsorted(uniq, ek, side="left")
    thr = np.searchsorted(uniq, sq, side="left")  # e >= s  <=>  rank(e) >= thr
    lo = cu_k[:-1][seq]
    hi = lo + n_keys
    counts = _count_prefix_ge(e_rank, hi, thr) - _count_prefix_ge(e_rank, lo, thr)
    return int(counts.sum())


# ----------------------------------------------------------------------------------------------------------
# attention_ref
# ----------------------------------------------------------------------------------------------------------

def _attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float):
    """One sequence. q (Lq, Hq, D), k (Lk, Hkv, D), v (Lk, Hkv, Dv), mask (Lq, Lk) bool or None (all visible).

    Returns out (Lq, Hq, Dv) in the compute dtype and lse (Hq, Lq) in the softmax dtype.
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k)
    soft_dtype = torch.promote_types(scores.dtype, torch.float32)
    scores = scores.to(soft_dtype) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if scores.shape[-1] == 0:
        row_max = scores.new_zeros(scores.shape[:-1] + (1,))
    else:
        row_max = scores.amax(dim=-1, keepdim=True).detach()
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    # Masked scores are -inf, so exp() gives exact zeros there, with zero gradient.
    p = torch.exp(scores - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    seen = denom > 0
    safe_denom = torch.where(seen, denom, torch.ones_like(denom))
    lse = torch.where(seen, torch.log(safe_denom) + row_max, torch.full_like(denom, float("-inf"))).squeeze(-1)
    p = p / safe_denom
    out = torch.einsum("hqk,khd->qhd", p.to(v.dtype), v)
    return out, lse


def _attend_chunked(q, k, v, seqlen_q, seqlen_k, causal, start_q, end_k, scale):
    """One sequence, split into query-row chunks that bound the size of the score matrix (and of the mask)."""
    heads = q.shape[1]
    rows_per_chunk = max(1, _MAX_CHUNK_ELEMS // max(1, heads * max(1, seqlen_k)))
    need_mask = causal or start_q is not None
    outs, lses = [], []
    for r0 in range(0, max(seqlen_q, 1), rows_per_chunk):
        r1 = min(seqlen_q, r0 + rows_per_chunk)
        m = visible_mask(seqlen_q, seqlen_k, causal, start_q, end_k, device=q.device, rows=(r0, r1)) if need_mask \
            else None
        o, l = _attend_one(q[r0:r1], k, v, m, scale)
        outs.append(o)
        lses.append(l)
    if len(outs) == 1:
        return outs[0], lses[0]
    return torch.cat(outs, dim=0), torch.cat(lses, dim=1)


def _check_tensor(name, t, rank):
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank:
        _fail(f"{name} must have {rank} dims, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        _fail(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_tree_tensor(name, t, shape):
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be an integer torch.Tensor of shape {shape}, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        _fail(f"{name} must hold integers, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        _fail(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def attention_ref(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, causal=False, softmax_scale=None,
                  tree_dfs_order_start_q=None, tree_dfs_order_end_k=None, upcast=True, return_lse=False):
    """Reference attention with the flash_tree_attn semantics.

    Layouts:
      * varlen: q (total_q, Hq, D), k (total_k, Hkv, D), v (total_k, Hkv, Dv); ``cu_seqlens_q`` / ``cu_seqlens_k``
        (B + 1,) are required; tree arrays are (total_q,) and (total_k,). Query tokens past ``cu_seqlens_q[-1]``
        get zero output and ``-inf`` lse.
      * padded: q (B, Sq, Hq, D), k (B, Sk, Hkv, D), v (B, Sk, Hkv, Dv); no cu_seqlens; tree arrays (B, Sq), (B, Sk).

    Hq must be a multiple of Hkv: query head h uses kv head h // (Hq // Hkv). Tree arrays require ``causal=True``.

    ``upcast=True`` computes everything in float32 (float64 inputs stay float64) and returns that dtype.
    ``upcast=False`` runs both matmuls in the input dtype, the softmax in float32, and returns the input dtype:
    the same computation in the input precision, the yardstick for kernel error.

    Returns ``out``, or ``(out, lse)`` with ``return_lse=True``: lse is the float32 (float64 for float64 input)
    natural-log softmax normalizer, (Hq, total_q) for varlen and (B, Hq, Sq) for padded, ``-inf`` for rows that
    see no key (whose output rows are zero).
    """
    if q is None or k is None or v is None:
        _fail("q, k and v are required")
    if not isinstance(q, torch.Tensor):
        _fail(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.dim() not in (3, 4):
        _fail(f"q must be 3-D (total_q, heads, head_dim) for varlen or 4-D (batch, seqlen, heads, head_dim) for "
              f"padded inputs, got shape {tuple(q.shape)}")
    varlen = q.dim() == 3
    rank = q.dim()
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t, rank)
    if not (q.device == k.device == v.device):
        _fail(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    hq, hkv, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if k.shape[-1] != d:
        _fail(f"q and k must have the same head dim, got {d} and {k.shape[-1]}")
    if v.shape[:-1] != k.shape[:-1]:
        _fail(f"k and v must agree on all but the last dim, got {tuple(k.shape)} and {tuple(v.shape)}")
    if hkv == 0 or hq % hkv != 0:
        _fail(f"the number of query heads ({hq}) must be a multiple of the number of key/value heads ({hkv})")
    has_tree = tree_dfs_order_start_q is not None or tree_dfs_order_end_k is not None
    if has_tree:
        if tree_dfs_order_start_q is None or tree_dfs_order_end_k is None:
            _fail("pass both tree_dfs_order_start_q and tree_dfs_order_end_k, or neither")
        if not causal:
            _fail("tree attention is causal by construction: pass causal=True with the tree arrays")
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(d)
    if upcast:
        cdt = torch.promote_types(q.dtype, torch.float32)
        qc, kc, vc = q.to(cdt), k.to(cdt), v.to(cdt)
    else:
        if not (q.dtype == k.dtype == v.dtype):
            _fail(f"with upcast=False q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
        qc, kc, vc = q, k, v
    dv = v.shape[-1]

    if varlen:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            _fail("varlen inputs (3-D q) need cu_seqlens_q and cu_seqlens_k")
        cq = _as_int_list("cu_seqlens_q", cu_seqlens_q)
        ck = _as_int_list("cu_seqlens_k", cu_seqlens_k)
        _check_cu_seqlens("cu_seqlens_q", cq, q.shape[0])
        _check_cu_seqlens("cu_seqlens_k", ck, k.shape[0])
        if len(cq) != len(ck):
            _fail(f"cu_seqlens_q and cu_seqlens_k must have the same length (B + 1), got {len(cq)} and {len(ck)}")
        if has_tree:
            _check_tree_tensor("tree_dfs_order_start_q", tree_dfs_order_start_q, (q.shape[0],))
            _check_tree_tensor("tree_dfs_order_end_k", tree_dfs_order_end_k, (k.shape[0],))
            sq_all = tree_dfs_order_start_q.to(q.device)
            ek_all = tree_dfs_order_end_k.to(q.device)
        outs, lses = [], []
        for b in range(len(cq) - 1):
            q0, q1, k0, k1 = cq[b], cq[b + 1], ck[b], ck[b + 1]
            s_b = sq_all[q0:q1] if has_tree else None
            e_b = ek_all[k0:k1] if has_tree else None
            o, l = _attend_chunked(qc[q0:q1], kc[k0:k1], vc[k0:k1], q1 - q0, k1 - k0, causal, s_b, e_b, scale)
            outs.append(o)
            lses.append(l)
        tail = q.shape[0] - cq[-1]
        out_dtype = vc.dtype
        lse_dtype = torch.promote_types(qc.dtype, torch.float32)
        if tail:
            outs.append(torch.zeros(tail, hq, dv, dtype=out_dtype, device=q.device))
            lses.append(torch.full((hq, tail), float("-inf"), dtype=lse_dtype, device=q.device))
        if outs:
            out = torch.cat([o.to(out_dtype) for o in outs], dim=0)
            lse = torch.cat([l.to(lse_dtype) for l in lses], dim=1)
        else:
            out = torch.zeros(0, hq, dv, dtype=out_dtype, device=q.device)
            lse = torch.zeros(hq, 0, dtype=lse_dtype, device=q.device)
    else:
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            _fail("cu_seqlens_q / cu_seqlens_k are for the varlen layout (3-D q); padded inputs (4-D q) take none")
        bsz, sq_len = q.shape[0], q.shape[1]
        sk_len = k.shape[1]
        if k.shape[0] != bsz:
            _fail(f"q and k must have the same batch size, got {bsz} and {k.shape[0]}")
        if has_tree:
            _check_tree_tensor("tree_dfs_order_start_q", tree_dfs_order_start_q, (bsz, sq_len))
            _check_tree_tensor("tree_dfs_order_end_k", tree_dfs_order_end_k, (bsz, sk_len))
            sq_all = tree_dfs_order_start_q.to(q.device)
            ek_all = tree_dfs_order_end_k.to(q.device)
        outs, lses = [], []
        for b in range(bsz):
            s_b = sq_all[b] if has_tree else None
            e_b = ek_all[b] if has_tree else None
            o, l = _attend_chunked(qc[b], kc[b], vc[b], sq_len, sk_len, causal, s_b, e_b, scale)
            outs.append(o)
            lses.append(l)
        lse_dtype = torch.promote_types(qc.dtype, torch.float32)
        if outs:
            out = torch.stack(outs, dim=0)
            lse = torch.stack([l.to(lse_dtype) for l in lses], dim=0)
        else:
            out = torch.zeros(0, sq_len, hq, dv, dtype=vc.dtype, device=q.device)
            lse = torch.zeros(0, hq, sq_len, dtype=lse_dtype, device=q.device)
    if return_lse:
        return out, lse
    return out
