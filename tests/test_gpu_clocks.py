"""tools/gpu_clocks.py's parsing and summary of nvidia-smi samples. CPU only."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import gpu_clocks as gc  # noqa: E402


def test_parse_sample_reads_clock_power_and_reasons():
    assert gc.parse_sample("1620, 691.35, 0x0000000000000004\n") == (1620.0, 691.35, "0x0000000000000004")


@pytest.mark.parametrize("line", [
    "[N/A], 691.35, 0x0000000000000004",           # a value nvidia-smi could not read
    "Field \"clocks_event_reasons.active\" is not a valid field to query.",
    "1620, 691.35",                                 # a field missing
    "",
])
def test_parse_sample_skips_what_is_not_a_sample(line):
    assert gc.parse_sample(line) is None


def test_summary_gives_medians_minimum_and_reason_counts():
    samples = [(1620.0, 690.0, "0x4"), (1680.0, 692.0, "0x4"), (1965.0, 600.0, "0x0"), (1600.0, 695.0, "0x4")]
    assert gc.summarize(samples) == ("4 samples: SM clock median 1650 MHz (min 1600), power median 691 W, "
                                     "reasons 0x4 x3, 0x0 x1")


def test_summary_without_samples_says_why():
    assert gc.summarize([]).startswith("no samples")


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        gc.main(["--"])
    assert e.value.code == 2
    assert "give the command to run" in capsys.readouterr().err


def test_without_nvidia_smi_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(gc.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="nvidia-smi is not on PATH"):
        gc.main(["--", "true"])
