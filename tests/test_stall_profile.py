"""tools/stall_profile.py on a hand-written export in the shape of `ncu --page source --csv`. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import stall_profile as sp  # noqa: E402

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)",'
          '"stall_barrier","stall_short_sb","stall_wait","stall_barrier (Not Issued)","stall_short_sb (Not Issued)",'
          '"stall_wait (Not Issued)"')
CSV = "\n".join([
    '"Kernel Name","void ns::bwd_kernel<T<1>>(P)"',
    HEADER,
    '"0x10","      HGMMA.64x64x16.F32.BF16 R152, gdesc[UR16], RZ","10","8","0","0","10","0","0","8"',
    '"0x20","      STS.64 [R3+0x28800], R152","60","58","55","0","5","54","0","4"',
    '"0x30","      FFMA.FTZ R228, R188, UR9, -R14","30","29","0","30","0","0","29","0"',
    '"0x40","      NOP","0","0","0","0","0","0","0","0"',
])


def test_profile_ranks_instructions_and_reasons():
    out = sp.profile(CSV).splitlines()
    assert out[0] == "100 samples over 4 instructions"
    # (Not Issued) columns are a subset and are not added to the reason totals
    assert out[1] == "by reason: barrier 55.0%, short_sb 30.0%, wait 15.0%"
    assert "STS.64 [R3+0x28800], R152" in out[2] and out[2].lstrip().startswith("60.0%") and "barrier 92%" in out[2]
    assert "FFMA.FTZ" in out[3] and "short_sb 100%" in out[3]
    assert "HGMMA" in out[4]
    assert len(out) == 5  # instructions without samples are not listed


def test_profile_top_limits_the_listing():
    assert len(sp.profile(CSV, top=1).splitlines()) == 3


def test_not_an_export_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Address"):
        sp.profile("ID,Kernel,Metric\n1,k,2\n")
    bad = tmp_path / "x.csv"
    bad.write_text('"Address","Source"\n"0x1","NOP"\n')
    assert sp.main([str(bad)]) == 1
