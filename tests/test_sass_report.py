"""The SASS parsing of tools/sass_report.py (function split, loop detection, opcode counts, ptxas lines) on
a hand-written disassembly in nvdisasm's format. CPU only; the tool itself needs nvcc and nvdisasm."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import sass_report as sr  # noqa: E402

SASS = """
\t.section\t.text._Z10bwd_kernelv,"ax",@progbits
_Z10bwd_kernelv:
        /*0000*/                   S2R R0, SR_TID.X ;                 /* 0x000000000000 */
.L_x_0:
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0020*/              @!P0 LDG.E.CONSTANT R2, desc[UR4][R6.64] ;
.L_x_1:
        /*0030*/                   REDG.E.ADD.F32x2.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R4 ;
        /*0040*/               @P1 BRA `(.L_x_1) ;
        /*0050*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0060*/               @P2 BRA `(.L_x_0) ;
        /*0070*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0080*/                   EXIT ;
\t.section\t.text._Z5otherv,"ax",@progbits
        /*0000*/                   EXIT ;
"""


def test_functions_loops_and_opcodes():
    functions = sr.split_functions(SASS)
    assert list(functions) == ["_Z10bwd_kernelv", "_Z5otherv"]
    found = sr.loops(functions["_Z10bwd_kernelv"])
    # two backward branches: the outer loop (0x10-0x60) and the inner one (0x30-0x40); forward BRA ignored
    assert [(lo, hi) for lo, hi, _ in found] == [(0x10, 0x60), (0x30, 0x40)]
    outer = found[0][2]
    assert outer == {"HMMA": 2, "LDG": 1, "REDG": 1, "BRA": 2}
    assert sr.opcode("@!P0 LDG.E.CONSTANT R2, desc[UR4][R6.64]") == "LDG"


def test_report_filters_by_function():
    text = sr.report(SASS, r"bwd_kernel")
    assert "_Z10bwd_kernelv" in text and "_Z5otherv" not in text
    assert "whole function: 9 instructions" in text
    assert "loop 0x10-0x60: 6 instructions; HMMA 2, BRA 2, LDG 1, REDG 1" in text
    assert sr.report(SASS, r"nothing") == "no function matches 'nothing'"


def test_ptxas_lines_of_the_matching_function_only():
    log = """ptxas info    : Compiling entry function '_Z10bwd_kernelv' for 'sm_90a'
ptxas info    : Function properties for _Z10bwd_kernelv
    80 bytes stack frame, 76 bytes spill stores, 76 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 80 bytes cumulative stack size
ptxas info    : Function properties for _Z8prepostv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers
"""
    assert sr.ptxas_summary(log, r"bwd_kernel").splitlines() == [
        "ptxas: 80 bytes stack frame, 76 bytes spill stores, 76 bytes spill loads",
        "ptxas: Used 255 registers, used 1 barriers, 80 bytes cumulative stack size",
    ]
