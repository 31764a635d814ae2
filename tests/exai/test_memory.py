"""Big frees go back to the system: the mmap threshold stays where it was set."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exai.memory import return_big_frees

PROBE = """
import os, sys
from exai.memory import return_big_frees
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
if sys.argv[1] == "on":
    assert return_big_frees()
big = b"x" * (1 << 20)
del big  # the first big free: glibc raises its threshold past 1 MiB here
frames, pins = [], []
for _ in range(64):
    frames.append(b"x" * (1 << 20))
    pins.append(bytearray(4096))  # a small block after each: the heap cannot shrink
del frames
print(rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_burst_of_big_buffers_is_given_back() -> None:
    """64 MiB of 1 MiB frames freed: with the fix the process's RSS drops back; glibc's
    default, having raised its threshold, keeps most of them."""

    def rss(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout)

    assert return_big_frees()
    assert rss("on") < rss("off") - 32 * (1 << 20)
