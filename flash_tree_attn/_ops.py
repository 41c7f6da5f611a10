"""The flash_tree_attn torch ops: schema, fake (meta) implementation and autograd.

The schema is defined here, once. The compiled extension (csrc/torch_binding.cpp) registers the CUDA
implementation of the same ops, and the autograd of fwd, with TORCH_LIBRARY_IMPL when it is loaded; without it
(CPU-only install) the ops still exist, with the same autograd formula registered from here, so models trace under
torch.compile with fake tensors, and calling them on real tensors says how to get the extension.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import torch

from .wheel import build_info, compatibility_problem, fix_command

_PKG_DIR = Path(__file__).resolve().parent

# Keep a reference to the library object: it owns the definitions.
_LIB = torch.library.Library("flash_tree_attn", "DEF")

_COMMON_ARGS = (
    "Tensor cu_seqlens_q, Tensor cu_seqlens_k, Tensor? tree_start_q, Tensor? tree_end_k, "
    "SymInt max_seqlen_q, SymInt max_seqlen_k, float softmax_scale, bool causal, "
    "int window_left, int window_right, float softcap, bool deterministic, int kernel_path"
)
_LIB.define(f"fwd(Tensor q, Tensor k, Tensor v, {_COMMON_ARGS}) -> (Tensor out, Tensor softmax_lse)")
_LIB.define(
    f"bwd(Tensor dout, Tensor? dsoftmax_lse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, "
    f"{_COMMON_ARGS}) -> (Tensor dq, Tensor dk, Tensor dv)"
)

# Kernel path codes shared with csrc/kernel_api.h (KernelPath).
KERNEL_PATHS = {"auto": 0, "sm80": 80, "sm90": 90}


def _find_extension() -> str | None:
    hits = sorted(glob.glob(str(_PKG_DIR / "_C*.so")) + glob.glob(str(_PKG_DIR / "_C*.pyd")))
    return hits[0] if hits else None


def _load_extension() -> tuple[bool, str]:
    path = _find_extension()
    if path is None:
        return False, (
            "the flash_tree_attn CUDA extension is not installed (this is a CPU-only or "
            "FLASH_TREE_ATTN_SKIP_CUDA_BUILD install). Install a prebuilt wheel with "
            "`pip install flash-tree-attn`, or build it with `pip install --no-build-isolation .` on a machine "
            "with nvcc. For a pure-PyTorch computation use flash_tree_attn.reference.attention_ref."
        )
    info = build_info()
    # Loading an extension built for another torch ends in an undefined-symbol crash; say what to do instead.
    # (A source checkout rebuilds with `pip install --no-build-isolation -e .`.)
    problem = compatibility_problem(info, torch.__version__, torch.version.cuda, bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    if problem:
        raise ImportError(problem)
    try:
        torch.ops.load_library(path)
    except OSError as e:
        return False, (
            f"the flash_tree_attn extension at {path} failed to load: {e}. If it was built for another torch, "
            f"reinstall it for this one: `{fix_command(info.get('version'))}`"
        )
    return True, ""


EXTENSION_LOADED, EXTENSION_ERROR = _load_extension()


def require_extension() -> None:
    if not EXTENSION_LOADED:
        raise RuntimeError(EXTENSION_ERROR)


@torch.library.register_fake("flash_tree_attn::fwd")
def _fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, tree_start_q, tree_end_k, max_seqlen_q, max_seqlen_k,
              softmax_scale, causal, window_left, window_right, softcap, deterministic, kernel_path):
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("flash_tree_attn::bwd")
def _bwd_fake(dout, dsoftmax_lse, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, tree_start_q, tree_end_k,
              max_seqlen_q, max_seqlen_k, softmax_scale, causal, window_left, window_right, softcap, deterministic,
              kernel_path):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


# The autograd of fwd. The extension registers it in C++ (csrc/torch_binding.cpp, FwdFunction): registered from
# Python it cost 0.1-0.3 ms of host time per call. This Python form, the same formula, serves where the extension is
# not loaded, so that models still trace forward and backward under torch.compile with fake tensors there.
def _setup_context(ctx, inputs, output):
    (q, k, v, cu_q, cu_k, start_q, end_k, *rest) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, start_q, end_k)
    ctx.rest = rest
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k, start_q, end_k = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dout = dout.contiguous()  # the kernels need 16-byte aligned rows; a no-op for the usual contiguous grad
    dq, dk, dv = torch.ops.flash_tree_attn.bwd(dout, dlse, q, k, v, out, lse, cu_q, cu_k, start_q, end_k, *ctx.rest)
    return (dq, dk, dv) + (None,) * (len(ctx.rest) + 4)


if not EXTENSION_LOADED:
    torch.library.register_autograd("flash_tree_attn::fwd", _backward, setup_context=_setup_context)


def kernel_path_from_env() -> int:
    name = os.environ.get("FLASH_TREE_ATTN_PATH", "auto").strip().lower() or "auto"
    if name not in KERNEL_PATHS:
        raise ValueError(f"FLASH_TREE_ATTN_PATH must be one of {sorted(KERNEL_PATHS)}, got {name!r}")
    return KERNEL_PATHS[name]
