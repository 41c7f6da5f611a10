"""tools/bound_margin.py: seeded draws of test_grpo_tree's case, the error-bound ratio and the emulation. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from flash_tree_attn.reference import ERROR_ATOL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bound_margin as bm  # noqa: E402


def test_a_seed_regenerates_its_draw():
    a = bm.draw(7, 4, 64, torch.bfloat16, "cpu")
    b = bm.draw(7, 4, 64, torch.bfloat16, "cpu")
    assert a[0].segments == b[0].segments
    for x, y in zip(a[1:], b[1:]):
        assert torch.equal(x, y)
    lay, q, k, v, g = a
    assert lay.num_sequences == 2
    assert q.shape == g.shape == (lay.total_tokens, 8, 64) and k.shape == v.shape == (lay.total_tokens, 2, 64)
    assert q.dtype == torch.bfloat16
    c = bm.draw(8, 4, 64, torch.bfloat16, "cpu")
    assert c[0].segments != a[0].segments or not torch.equal(c[1], q)


def test_ratio_is_the_tests_bound():
    ref = {name: torch.zeros(4) for name in bm.OUTPUTS}
    lowp = {name: torch.full((4,), 0.01) for name in bm.OUTPUTS}
    at_bound = {name: torch.full((4,), 0.02 + ERROR_ATOL[name]) for name in bm.OUTPUTS}
    assert bm.ratios(ref, ref, lowp) == {name: 0.0 for name in bm.OUTPUTS}
    assert bm.ratios(at_bound, ref, lowp) == pytest.approx({name: 1.0 for name in bm.OUTPUTS})
    # The low-precision reference itself always sits below half the bound.
    assert all(r < 0.5 for r in bm.ratios(lowp, ref, lowp).values())


def test_emulation_matches_the_reference_closely():
    lay, q, k, v, g = bm.draw(3, 2, 64, torch.bfloat16, "cpu")
    got = bm.emulate(lay, q, k, v, g)
    ref, ref_lowp = bm.references(lay, q, k, v, g)
    for name in bm.OUTPUTS:
        assert got[name].shape == ref[name].shape and got[name].dtype == torch.bfloat16
        assert torch.isfinite(got[name].float()).all()
    r = bm.ratios(got, ref, ref_lowp)
    assert all(0.0 < x < 2.0 for x in r.values()), r


def test_main_prints_one_line_per_output(capsys):
    assert bm.main(["--runs", "2", "--emulate", "--device", "cpu", "--head-dim", "64", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "2 draws from seed 5" in out
    assert sum("above 1:" in line for line in out.splitlines()) == len(bm.OUTPUTS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gets")
def test_without_a_gpu_the_kernel_mode_says_so(capsys):
    assert bm.main(["--runs", "1"]) == 2
    assert "--emulate" in capsys.readouterr().err
    assert bm.main(["--runs", "1", "--emulate", "--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err
