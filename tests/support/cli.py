"""Running our commands as a user does: `python -m broker …`, `python -m shim …` in a
subprocess of their own, bounded in time, with nothing left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import scaled

__all__ = ["run_python"]


def run_python(
    args: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `python <args>` to completion; its process group is killed if it hangs."""
    argv = [sys.executable, *args]
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=scaled(timeout_s))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{' '.join(args)} did not exit in time:\n{out}\n{err}") from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
