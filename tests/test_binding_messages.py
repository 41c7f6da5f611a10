"""The binding's error messages never go through an ostream (csrc/torch_binding.cpp, message() and FTA_CHECK).

Where a compiler links libstdc++ into the extension statically (the GPU test machine's gcc 13 does), the
extension's copy of the stream code cannot format numbers: TORCH_CHECK(cond, "got ", n) crashed the process there
and prints no number with gcc 12 and -static-libstdc++ (bench_results/RESULTS.md, 2026-11-30, eighth session).
The GPU tests check the messages themselves; this one keeps stream formatting out of the binding's source. CPU only.
"""
from __future__ import annotations

import re
from pathlib import Path

BINDING = Path(__file__).resolve().parents[1] / "csrc" / "torch_binding.cpp"


def code_lines() -> list[str]:
    """The binding without comments and string literals."""
    text = re.sub(r"//[^\n]*", "", BINDING.read_text())
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text.splitlines()


def test_every_check_builds_its_message_without_streams():
    lines = code_lines()
    torch_checks = [i for i, line in enumerate(lines) if "TORCH_CHECK(" in line]
    # The one TORCH_CHECK is the FTA_CHECK macro, which passes message()'s C string.
    assert len(torch_checks) == 1 and lines[torch_checks[0]].startswith("#define FTA_CHECK(")
    assert sum("FTA_CHECK(" in line for line in lines) > 20
    for word in ("c10::str(", "ostringstream", "stringstream", "<<", "TORCH_INTERNAL_ASSERT", "TORCH_WARN"):
        assert not any(word in line for line in lines), word
