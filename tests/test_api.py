"""CPU tests of the public API: argument validation messages, unsupported options, shapes through the
registered fake implementation (meta tensors), torch.compile tracing, and the command-line self-check."""
import os
import subprocess
import sys

import pytest
import torch

import flash_tree_attn as fta
from flash_tree_attn import _ops, interface


def meta_qkv(total_q=10, total_k=10, hq=4, hkv=2, d=64, dtype=torch.bfloat16):
    q = torch.empty(total_q, hq, d, device="meta", dtype=dtype)
    k = torch.empty(total_k, hkv, d, device="meta", dtype=dtype)
    v = torch.empty(total_k, hkv, d, device="meta", dtype=dtype)
    return q, k, v


def meta_cu(*lens):
    return torch.empty(len(lens) + 1, dtype=torch.int32, device="meta")


def call(q=None, k=None, v=None, cu_q=None, cu_k=None, max_q=10, max_k=10, **kw):
    dq, dk, dv = meta_qkv()
    q = dq if q is None else q
    k = dk if k is None else k
    v = dv if v is None else v
    cu_q = meta_cu(10) if cu_q is None else cu_q
    cu_k = meta_cu(10) if cu_k is None else cu_k
    return fta.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, **kw)


def test_cpu_tensors_are_refused_with_a_pointer_to_the_reference():
    q = torch.randn(8, 2, 64, dtype=torch.bfloat16)
    cu = torch.tensor([0, 8], dtype=torch.int32)
    with pytest.raises(ValueError, match="attention_ref"):
        fta.flash_attn_varlen_func(q, q, q, cu, cu, 8, 8, causal=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(q=torch.empty(10, 4, 64, device="meta", dtype=torch.float32)), "float16 or bfloat16"),
        (dict(q=torch.empty(10, 4, 264, device="meta", dtype=torch.bfloat16),
              k=torch.empty(10, 2, 264, device="meta", dtype=torch.bfloat16),
              v=torch.empty(10, 2, 264, device="meta", dtype=torch.bfloat16)), "multiple of 8"),
        (dict(q=torch.empty(10, 4, 60, device="meta", dtype=torch.bfloat16),
              k=torch.empty(10, 2, 60, device="meta", dtype=torch.bfloat16),
              v=torch.empty(10, 2, 60, device="meta", dtype=torch.bfloat16)), "multiple of 8"),
        (dict(q=torch.empty(10, 3, 64, device="meta", dtype=torch.bfloat16)), "multiple of the number of key/value"),
        (dict(q=torch.empty(10, 64, device="meta", dtype=torch.bfloat16)), "must have 3 dims"),
        (dict(k=torch.empty(10, 2, 128, device="meta", dtype=torch.bfloat16)), "same shape"),
        (dict(cu_q=torch.empty(2, dtype=torch.int64, device="meta")), "int32"),
        (dict(cu_q=torch.empty(3, dtype=torch.int32, device="meta")), "same length"),
        (dict(max_q=torch.tensor(10)), "Python int"),
        (dict(max_q=-1), ">= 0"),
        (dict(causal=False, tree_dfs_order_start_q=torch.empty(10, dtype=torch.int32, device="meta"),
              tree_dfs_order_end_k=torch.empty(10, dtype=torch.int32, device="meta")), "causal=True"),
        (dict(causal=True, tree_dfs_order_start_q=torch.empty(10, dtype=torch.int32, device="meta")), "both"),
        (dict(causal=True, tree_dfs_order_start_q=torch.empty(9, dtype=torch.int32, device="meta"),
              tree_dfs_order_end_k=torch.empty(10, dtype=torch.int32, device="meta")), r"shape \(10,\)"),
    ],
)
def test_validation_messages(kwargs, match):
    with pytest.raises(ValueError, match=match):
        call(**kwargs)


def test_non_contiguous_last_dim_is_refused():
    q = torch.empty(10, 64, 4, device="meta", dtype=torch.bfloat16).transpose(1, 2)
    with pytest.raises(ValueError, match="contiguous last dimension"):
        call(q=q)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dropout_p=0.1), "dropout_p"),
        (dict(alibi_slopes=torch.ones(4)), "alibi_slopes"),
        (dict(block_table=torch.zeros(1, 1, dtype=torch.int32)), "block_table"),
        (dict(window_size=(128, 0)), "window_size"),
        (dict(softcap=30.0), "softcap"),
    ],
)
def test_unsupported_options_name_the_argument(kwargs, match):
    with pytest.raises(NotImplementedError, match=match):
        call(**kwargs)


def test_shapes_through_the_fake_implementation():
    q, k, v = meta_qkv(12, 20, 8, 2, 128)
    out, lse, probs = fta.flash_attn_varlen_func(q, k, v, meta_cu(5, 7), meta_cu(9, 11), 7, 11, causal=True,
                                                 return_attn_probs=True)
    assert out.shape == (12, 8, 128) and out.dtype == torch.bfloat16
    assert lse.shape == (8, 12) and lse.dtype == torch.float32 and probs is None
    qp = torch.empty(3, 5, 8, 64, device="meta", dtype=torch.float16)
    kp = torch.empty(3, 7, 2, 64, device="meta", dtype=torch.float16)
    out, lse, _ = fta.flash_attn_func(qp, kp, kp, causal=True, return_attn_probs=True)
    assert out.shape == (3, 5, 8, 64) and lse.shape == (3, 8, 5)


def test_torch_compile_traces_forward_and_backward_without_graph_breaks():
    q, k, v = (t.requires_grad_() for t in meta_qkv(16, 16, 4, 2, 64))
    cu = meta_cu(6, 10)
    sq = torch.empty(16, dtype=torch.int32, device="meta")
    ek = torch.empty(16, dtype=torch.int32, device="meta")

    def f(q, k, v):
        out = fta.flash_attn_varlen_func(q * 2, k, v, cu, cu, 10, 10, causal=True,
                                         tree_dfs_order_start_q=sq, tree_dfs_order_end_k=ek)
        return out.float().square().sum()

    explanation = torch._dynamo.explain(f)(q, k, v)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    loss.backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


def test_deep_validation_reports_bad_values():
    cu_bad = torch.tensor([0, 5, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match="non-decreasing"):
        interface._deep_validate(cu_bad, cu_bad, 5, 5, 5, 5, None, None)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(ValueError, match="max_seqlen"):
        interface._deep_validate(cu, cu, 4, 4, 3, 4, None, None)
    start = torch.tensor([0, 1, 3, 2], dtype=torch.int32)
    end = torch.tensor([3, 3, 3, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match="DFS order"):
        interface._deep_validate(cu, cu, 4, 4, 4, 4, start, end)
    start = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    end = torch.tensor([3, 3, 1, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match="cannot see itself"):
        interface._deep_validate(cu, cu, 4, 4, 4, 4, start, end)
    interface._deep_validate(cu, cu, 4, 4, 4, 4, torch.arange(4, dtype=torch.int32), torch.full((4,), 3, dtype=torch.int32))


def test_self_check_command_on_a_cpu_only_machine():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "-m", "flash_tree_attn"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"flash-tree-attn {fta.__version__}" in res.stdout
    assert "kernel path: none" in res.stdout


@pytest.mark.parametrize(
    "capability, paths, forced, expected",
    [
        ((9, 0), ["sm80", "sm90"], "auto", "sm90"),
        ((9, 0), ["sm80", "sm90"], "sm80", "sm80"),
        ((9, 0), ["sm80"], "auto", "sm80"),
        ((8, 0), ["sm80", "sm90"], "auto", "sm80"),
        ((8, 6), ["sm80", "sm90"], "sm90", None),  # forcing Hopper kernels on an Ampere GPU is an error
        ((9, 0), ["sm80"], "sm90", None),  # ... and in a build without them
        ((7, 5), ["sm80", "sm90"], "auto", None),  # below sm_80
    ],
)
def test_kernel_path_report(monkeypatch, capability, paths, forced, expected):
    """What `python -m flash_tree_attn` says about the path a call takes (same rules as csrc/dispatch.cu)."""
    from flash_tree_attn import __main__ as cli

    monkeypatch.setattr(_ops, "EXTENSION_LOADED", True)
    monkeypatch.setattr(_ops, "build_info", lambda: {"kernel_paths": paths, "cuda_archs": ["80", "90"]})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "test GPU")
    monkeypatch.setenv("FLASH_TREE_ATTN_PATH", forced)
    path, why = cli.kernel_path_report()
    assert path == expected, why
    if expected is None:
        assert why
