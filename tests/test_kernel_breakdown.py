"""tools/kernel_breakdown.py: kernel names and the printed breakdown. CPU only (the profiling runs on the GPU)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import kernel_breakdown as kb  # noqa: E402


def test_short_name_drops_template_arguments_and_cuts():
    name = "void flash_tree_attn::sm90::bwd_kernel<flash_tree_attn::sm90::BwdTraits<128, bf16>, true>(BwdParams)"
    assert kb.short_name(name) == "flash_tree_attn::sm90::bwd_kernel(BwdParams)"
    assert kb.short_name("a<b<c>>d" * 20, width=10) == "ad" * 5


def test_short_name_of_a_mangled_name_is_its_scope():
    # what torch.profiler reports for the sm90 backward, whose template arguments it does not demangle
    name = "_ZN15flash_tree_attn4sm9010bwd_kernelINS0_9BwdTraitsILi128EN7cutlass10bfloat16_tEEELb1EN4cute9TiledCopy"
    assert kb.short_name(name) == "flash_tree_attn::sm90::bwd_kernel"
    assert kb.mangled_scope("void f<int>()") is None


def test_summary_orders_kernels_and_shares_add_up():
    us = {"fwd": 4000.0, "bwd": 12000.0, "fill": 400.0}  # over 2 calls
    lines = kb.summarize("wl", 1234, 10.0, us, iters=2)
    assert lines[0] == "wl: 1234 tokens, wall 10.000 ms per forward+backward, GPU busy 8.200 ms (82.0%)"
    assert [line.split()[-1] for line in lines[1:]] == ["bwd", "fwd", "fill"]
    assert lines[1].split()[0] == "6.000"
    assert abs(sum(float(line.split()[2].rstrip("%")) for line in lines[1:]) - 100.0) < 0.2
