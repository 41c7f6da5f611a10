"""`python -m flash_tree_attn`: what is installed, what it was built with, what would run here.

On a machine with a usable GPU it also runs one small tree-attention forward and backward and compares it with
the fp32 reference. Exit status 0 when everything that can run here works, 1 otherwise.
"""
from __future__ import annotations

import sys

import torch

from . import __version__, _ops
from .wheel import environment_report


def kernel_path_report() -> tuple[str | None, str]:
    """(path that would run on the current GPU or None, explanation)."""
    if not _ops.EXTENSION_LOADED:
        return None, _ops.EXTENSION_ERROR
    if not torch.cuda.is_available():
        return None, "no CUDA GPU is visible to torch"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return None, f"{torch.cuda.get_device_name()} is sm_{major}{minor}; the kernels need sm_80 or newer"
    info = _ops.build_info()
    paths = info.get("kernel_paths", ["sm80"])
    forced = _ops.kernel_path_from_env()
    if forced == 90 and "sm90" not in paths:
        return None, "FLASH_TREE_ATTN_PATH=sm90 but the sm90 kernels are not compiled into this build"
    if forced == 90 and (major, minor) != (9, 0):
        return None, f"FLASH_TREE_ATTN_PATH=sm90 needs a compute capability 9.0 GPU; this one is sm_{major}{minor}"
    if (major, minor) == (9, 0) and "sm90" in paths and forced in (0, 90):
        return "sm90", "Hopper kernels (wgmma/TMA)"
    archs = [int(a) for a in info.get("cuda_archs", [])]
    native = major * 10 + minor in archs
    how = "native cubin" if native else "PTX compiled by the driver at load time"
    return "sm80", f"Ampere-path kernels (mma.sync), {how}"


def self_check() -> bool:
    from .reference import attention_ref
    from .tree import layout_from_segments
    from .interface import flash_attn_varlen_func

    lay = layout_from_segments([[(-1, 97), (0, 60), (0, 81), (1, 33)]], device="cuda")
    n = lay.total_tokens
    info = _ops.build_info()
    d = min(info.get("head_dims") or [64])
    dtype = torch.float16 if info.get("dtypes") == ["fp16"] else torch.bfloat16
    torch.manual_seed(0)
    q, k, v = (torch.randn(n, h, d, device="cuda", dtype=dtype, requires_grad=True) for h in (4, 2, 2))
    out = flash_attn_varlen_func(q, k, v, **lay.varlen_kwargs())
    out.float().square().sum().backward()
    ref = attention_ref(q.detach(), k.detach(), v.detach(), lay.cu_seqlens, lay.cu_seqlens, causal=True,
                        tree_dfs_order_start_q=lay.start_q, tree_dfs_order_end_k=lay.end_k)
    err = ((out.float() - ref).norm() / ref.norm()).item()
    ok = err < 1e-2 and all(torch.isfinite(t.grad).all() for t in (q, k, v))
    print(f"  self-check: tree attention ({n} tokens, head dim {d}) relative error vs fp32 reference "
          f"{err:.2e}, gradients finite: {ok}")
    return ok


def main() -> int:
    info = _ops.build_info()
    print(f"flash-tree-attn {__version__}")
    print(f"  torch {torch.__version__} (CUDA {torch.version.cuda})")
    if info.get("cuda_extension", True) and _ops.EXTENSION_LOADED:
        print(f"  extension built with torch {info.get('torch_full', info.get('torch', '?'))}, CUDA {info.get('cuda', '?')},"
              f" git {str(info.get('git_commit', '?'))[:12]}")
        print(f"  compiled archs: sm_{', sm_'.join(map(str, info.get('cuda_archs', [])))}; head dims: "
              f"{info.get('head_dims')}; dtypes: {info.get('dtypes')}; kernel paths: {info.get('kernel_paths')}")
    else:
        print(f"  CUDA extension: not available ({_ops.EXTENSION_ERROR})")
    wheel_name = environment_report().get("wheel")
    if wheel_name:
        print(f"  matching prebuilt wheel: {wheel_name}")
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        print(f"  GPU: {torch.cuda.get_device_name()} (sm_{major}{minor})")
    else:
        print("  GPU: none visible")
    path, why = kernel_path_report()
    print(f"  kernel path: {path or 'none'} ({why})")
    if path is None:
        # A CPU-only install is a valid state: the reference and tree tools work.
        return 0 if not torch.cuda.is_available() else 1
    return 0 if self_check() else 1


if __name__ == "__main__":
    sys.exit(main())
