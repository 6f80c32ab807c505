"""engine/malloc.py: glibc's memory maps switched off for large blocks (in a subprocess: process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import ctypes, sys
from semask.engine.malloc import keep_large_blocks_in_heap
applied = keep_large_blocks_in_heap()
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):  # struct mallinfo2 (glibc >= 2.33): hblkhd = bytes in memory maps
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
block = libc.malloc(64 << 20)
print(applied, libc.mallinfo2().hblkhd >= 64 << 20)
"""


def _run(env_value: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("SEMASK_MALLOC", None)
    if env_value is not None:
        env["SEMASK_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True)
    return out.stdout.split()


def _glibc_with_mallinfo2() -> bool:
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_64_mib_block_comes_from_the_heap_not_a_memory_map():
    assert _run(None) == ["True", "False"]


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_semask_malloc_default_leaves_glibc_alone():
    assert _run("default") == ["False", "True"]
