"""tools/sanitizer_summary.py on a hand-written log in compute-sanitizer's format. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import sanitizer_summary as ss  # noqa: E402

LOG = """--- FLASH_TREE_ATTN_PATH=sm90 compute-sanitizer --tool racecheck
========= Error: Race reported between Write access at void ns::produce<T<1, 2>, C<(int)3>>(const P &, T2 &)+0x10 in k.h:86
=========     and Read access at void ns::consume<T<1>>(const P &)+0x20 in k.h:158 [32 hazards]
=========
========= Error: Race reported between Write access at void ns::produce<T<1, 2>, C<(int)3>>(const P &, T2 &)+0x10 in k.h:86
=========     and Read access at void ns::consume<T<1>>(const P &)+0x20 in k.h:158 [32 hazards]
=========
========= Error: Race reported between Read access at void ns::mask<(bool)1>(T2 &)::[lambda(int) (instance 1)]::operator ()(int) const+0x8 in s.h:40
=========     and Write access at void ns::produce<T<1>>(const P &)+0x30 in k.h:103 [600 hazards]
=========
========= RACECHECK SUMMARY: 3 hazards displayed (3 errors, 0 warnings)
"""


def test_short_location_drops_templates_and_parameters():
    assert ss.short_location("void ns::f<T<1, 2>>(const P &, int)+0x10 in k.h:86 [32 hazards]") == "ns::f()+0x10 in k.h:86"


def test_summarize_groups_pairs():
    out = ss.summarize(LOG)
    assert "--- FLASH_TREE_ATTN_PATH=sm90 compute-sanitizer --tool racecheck" in out
    assert "RACECHECK SUMMARY: 3 hazards displayed" in out
    assert "racecheck hazards by location pair (3 reports):" in out
    assert "    2  Write ns::produce()+0x10 in k.h:86\n       <-> Read ns::consume()+0x20 in k.h:158" in out
    assert "Read ns::mask()::[lambda() ()]::operator ()() const+0x8 in s.h:40" in out


def test_clean_log_has_no_hazard_section():
    out = ss.summarize("--- x\n========= ERROR SUMMARY: 0 errors\n")
    assert out == "--- x\n========= ERROR SUMMARY: 0 errors"
