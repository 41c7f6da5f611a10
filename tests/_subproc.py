"""Subprocess helper shared by the packaging tests."""
import os
import signal
import subprocess


def run_bounded(cmd, timeout, **kw) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group; on timeout the whole group (pip, ninja, nvcc, ...) is killed,
    none is left behind, and the assertion shows the tail of the output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[:4]} ran past {timeout} s:\n{out[-3000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
