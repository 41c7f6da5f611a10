"""Public API: FlashAttention-2 compatible functions with tree masking.

Only this project's CUDA kernels run behind these functions; there is no fallback to another attention
implementation. Semantics are written in README.md ("Semantics").
"""
from __future__ import annotations

import math
import os

import torch

from . import _ops

__all__ = ["flash_attn_varlen_func", "flash_attn_func"]

_DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


def _fail(msg: str):
    raise ValueError(f"flash_tree_attn: {msg}")


def _describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return f"{type(t).__name__}"
    return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device})"


def _check_unsupported(dropout_p, window_size, softcap, alibi_slopes, block_table):
    if dropout_p != 0.0:
        raise NotImplementedError(f"flash_tree_attn: dropout_p > 0 is not supported (got dropout_p={dropout_p})")
    if alibi_slopes is not None:
        raise NotImplementedError("flash_tree_attn: alibi_slopes is not supported")
    if block_table is not None:
        raise NotImplementedError("flash_tree_attn: block_table (paged KV cache) is not supported")
    if tuple(window_size) != (-1, -1):
        raise NotImplementedError(
            f"flash_tree_attn: window_size (sliding-window attention) is not supported yet; got {tuple(window_size)}, "
            "expected (-1, -1)"
        )
    if softcap != 0.0:
        raise NotImplementedError(f"flash_tree_attn: softcap is not supported yet; got softcap={softcap}, expected 0.0")


def _check_qkv(q, k, v, rank: int, layout: str):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            _fail(f"{name} must be a torch.Tensor, got {_describe(t)}")
        if t.dim() != rank:
            _fail(f"{name} must have {rank} dims {layout}, got shape {tuple(t.shape)}")
        # "meta" tensors are accepted for shape inference (no kernel runs; outputs are meta too).
        if t.device.type not in ("cuda", "meta"):
            raise ValueError(
                f"flash_tree_attn: {name} is on {t.device}; the kernels run on CUDA tensors only. For a CPU or fp32 "
                "computation use flash_tree_attn.reference.attention_ref"
            )
        if t.dtype not in _DTYPES:
            _fail(f"{name} must be float16 or bfloat16, got {t.dtype}")
        if t.stride(-1) != 1:
            _fail(f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}")
    if not (q.dtype == k.dtype == v.dtype):
        _fail(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        _fail(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        _fail(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    d = q.shape[-1]
    if k.shape[-1] != d:
        _fail(f"q and k must have the same head dim, got {d} and {k.shape[-1]}")
    if d > MAX_HEAD_DIM or d % 8 != 0 or d == 0:
        _fail(f"head dim must be a multiple of 8 in [8, {MAX_HEAD_DIM}], got {d}")
    hq, hkv = q.shape[-2], k.shape[-2]
    if hkv == 0 or hq % hkv != 0:
        _fail(f"the number of query heads ({hq}) must be a multiple of the number of key/value heads ({hkv})")


def _check_index(name, t, length, device):
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be an int32 torch.Tensor, got {_describe(t)}")
    if t.dtype != torch.int32:
        _fail(f"{name} must be int32, got {t.dtype}")
    if t.dim() != 1 or (length is not None and t.shape[0] != length):
        want = f"({length},)" if length is not None else "1-D"
        _fail(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.device != device:
        _fail(f"{name} must be on {device} like q, got {t.device}")
    if t.stride(0) != 1:
        _fail(f"{name} must be contiguous")


def _check_seqlen_int(name, value):
    if isinstance(value, torch.Tensor):
        _fail(f"{name} must be a Python int (a tensor would force a host-device sync), got {_describe(value)}")
    if not isinstance(value, (int, torch.SymInt)) or isinstance(value, bool):
        _fail(f"{name} must be an int, got {type(value).__name__}")
    if isinstance(value, int) and value < 0:
        _fail(f"{name} must be >= 0, got {value}")


def _deep_validation_wanted(validate: bool) -> bool:
    return validate or os.environ.get("FLASH_TREE_ATTN_VALIDATE", "").strip().upper() in ("1", "TRUE", "YES", "ON")


def _deep_validate(cu_q, cu_k, total_q, total_k, max_q, max_k, start_q, end_k):
    """Value checks (synchronizes with the GPU; opt-in)."""
    for name, cu, total, mx in (("cu_seqlens_q", cu_q, total_q, max_q), ("cu_seqlens_k", cu_k, total_k, max_k)):
        c = cu.to("cpu", torch.int64)
        if c[0].item() != 0:
            _fail(f"{name}[0] must be 0, got {c[0].item()}")
        lens = c[1:] - c[:-1]
        if (lens < 0).any():
            b = int(torch.nonzero(lens < 0)[0])
            _fail(f"{name} must be non-decreasing; {name}[{b + 1}]={c[b + 1].item()} < {name}[{b}]={c[b].item()}")
        if c[-1].item() > total:
            _fail(f"{name}[-1]={c[-1].item()} exceeds the number of tokens ({total})")
        if lens.numel() and lens.max().item() > mx:
            _fail(f"max_seqlen for {name} is {mx} but a sequence has {lens.max().item()} tokens")
    if start_q is None:
        return
    cq, ck = cu_q.to("cpu", torch.int64), cu_k.to("cpu", torch.int64)
    sq, ek = start_q.cpu(), end_k.cpu()
    for b in range(cq.numel() - 1):
        s = sq[cq[b]:cq[b + 1]]
        e = ek[ck[b]:ck[b + 1]]
        if s.numel() > 1 and (s[1:] < s[:-1]).any():
            i = int(torch.nonzero(s[1:] < s[:-1])[0]) + 1
            _fail(f"tree_dfs_order_start_q must be non-decreasing within a sequence (DFS order); sequence {b}, "
                  f"token {i}: {s[i].item()} < {s[i - 1].item()}")
        if s.numel() == e.numel() and s.numel() and (s > e).any():
            i = int(torch.nonzero(s > e)[0])
            _fail(f"token {i} of sequence {b} cannot see itself: tree_dfs_order_start_q={s[i].item()} > "
                  f"tree_dfs_order_end_k={e[i].item()}")


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
    tree_dfs_order_start_q=None,
    tree_dfs_order_end_k=None,
    validate=False,
):
    """Attention over packed variable-length sequences, optionally tree-masked.

    q: (total_q, Hq, D); k, v: (total_k, Hkv, D); fp16 or bf16 on CUDA; Hq % Hkv == 0; D a multiple of 8 <= 256.
    cu_seqlens_q / cu_seqlens_k: int32 (B + 1,) prefix sums of sequence lengths; max_seqlen_*: Python ints.
    tree_dfs_order_start_q (total_q,) / tree_dfs_order_end_k (total_k,): int32 tree arrays (see README);
    they require causal=True. Returns out (total_q, Hq, D), or (out, softmax_lse (Hq, total_q) fp32, None)
    with return_attn_probs=True. Rows that see no key give zeros and softmax_lse = -inf.
    validate=True (or FLASH_TREE_ATTN_VALIDATE=1) also checks index values, which synchronizes with the GPU.
    """
    _check_unsupported(dropout_p, window_size, softcap, alibi_slopes, block_table)
    _check_qkv(q, k, v, 3, "(total_tokens, heads, head_dim)")
    if q.shape[-1] != v.shape[-1]:
        _fail("v must have the same head dim as q")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        _check_index(name, cu, None, q.device)
        if cu.shape[0] < 1:
            _fail(f"{name} must have B + 1 >= 1 entries, got shape {tuple(cu.shape)}")
    if cu_seqlens_q.shape[0] != cu_seqlens_k.shape[0]:
        _fail(f"cu_seqlens_q and cu_seqlens_k must have the same length (B + 1), got {cu_seqlens_q.shape[0]} "
              f"and {cu_seqlens_k.shape[0]}")
    _check_seqlen_int("max_seqlen_q", max_seqlen_q)
    _check_seqlen_int("max_seqlen_k", max_seqlen_k)
    if k.shape[0] != v.shape[0]:
        _fail(f"k and v must have the same number of tokens, got {k.shape[0]} and {v.shape[0]}")
    has_tree = tree_dfs_order_start_q is not None or tree_dfs_order_end_k is not None
    if has_tree:
        if tree_dfs_order_start_q is None or tree_dfs_order_end_k is None:
            _fail("pass both tree_dfs_order_start_q and tree_dfs_order_end_k, or neither")
        if not causal:
            _fail("tree attention is causal by construction: pass causal=True with the tree arrays")
        _check_index("tree_dfs_order_start_q", tree_dfs_order_start_q, q.shape[0], q.device)
        _check_index("tree_dfs_order_end_k", tree_dfs_order_end_k, k.shape[0], q.device)
    if _deep_validation_wanted(validate) and q.device.type != "meta":
        _deep_validate(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k,
                       tree_dfs_order_start_q, tree_dfs_order_end_k)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    if q.device.type == "cuda":
        _ops.require_extension()
    out, lse = torch.ops.flash_tree_attn.fwd(
        q, k, v, cu_seqlens_q, cu_seqlens_k, tree_dfs_order_start_q, tree_dfs_order_end_k,
        max_seqlen_q, max_seqlen_k, float(softmax_scale), bool(causal), -1, -1, 0.0, bool(deterministic),
        _ops.kernel_path_from_env(),
    )
    if return_attn_probs:
        return out, lse, None
    return out


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
    tree_dfs_order_start_q=None,
    tree_dfs_order_end_k=None,
    validate=False,
):
    """Padded batches: q (B, Sq, Hq, D), k, v (B, Sk, Hkv, D); tree arrays (B, Sq) and (B, Sk).

    Returns out (B, Sq, Hq, D), or (out, softmax_lse (B, Hq, Sq), None) with return_attn_probs=True.
    """
    _check_unsupported(dropout_p, window_size, softcap, alibi_slopes, block_table)
    _check_qkv(q, k, v, 4, "(batch, seqlen, heads, head_dim)")
    B, Sq, Hq, D = q.shape
    if k.shape[0] != B:
        _fail(f"q and k must have the same batch size, got {B} and {k.shape[0]}")
    Sk = k.shape[1]
    start_q = end_k = None
    if tree_dfs_order_start_q is not None or tree_dfs_order_end_k is not None:
        if tree_dfs_order_start_q is None or tree_dfs_order_end_k is None:
            _fail("pass both tree_dfs_order_start_q and tree_dfs_order_end_k, or neither")
        for name, t, shape in (("tree_dfs_order_start_q", tree_dfs_order_start_q, (B, Sq)),
                               ("tree_dfs_order_end_k", tree_dfs_order_end_k, (B, Sk))):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                _fail(f"{name} must have shape {shape}, got {_describe(t)}")
        start_q = tree_dfs_order_start_q.reshape(-1)
        end_k = tree_dfs_order_end_k.reshape(-1)
    cu_q = torch.arange(0, (B + 1) * Sq, Sq, dtype=torch.int32, device=q.device) if Sq else torch.zeros(
        B + 1, dtype=torch.int32, device=q.device)
    cu_k = torch.arange(0, (B + 1) * Sk, Sk, dtype=torch.int32, device=q.device) if Sk else torch.zeros(
        B + 1, dtype=torch.int32, device=q.device)
    res = flash_attn_varlen_func(
        q.reshape(B * Sq, Hq, D), k.reshape(B * Sk, k.shape[2], D), v.reshape(B * Sk, v.shape[2], D),
        cu_q, cu_k, Sq, Sk, dropout_p=dropout_p, softmax_scale=softmax_scale, causal=causal,
        window_size=window_size, softcap=softcap, deterministic=deterministic, return_attn_probs=True,
        tree_dfs_order_start_q=start_q, tree_dfs_order_end_k=end_k, validate=validate,
    )
    out = res[0].reshape(B, Sq, Hq, D)
    if return_attn_probs:
        lse = res[1].reshape(Hq, B, Sq).permute(1, 0, 2)
        return out, lse, None
    return out
