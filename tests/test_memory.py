"""`memory.return_freed_memory`: freed large blocks leave the process at once."""

import ctypes
import os
import sys

import pytest

from fcn_graph.memory import return_freed_memory


def _rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_blocks_go_back_between_live_small_ones():
    assert return_freed_memory(threshold=1 << 20) is True
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 1 << 20, 64
    # glibc by default raises its mapping threshold to the size of a freed
    # mapped block: after this, 1 MiB blocks would come from the heap.
    libc.free(libc.malloc(8 * size))
    big, small = [], []
    for _ in range(count):  # 1 MiB blocks, each followed by a small block that stays
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        big.append(block)
        small.append(libc.malloc(64))
    before = _rss_bytes()
    for block in big:
        libc.free(block)
    released = before - _rss_bytes()
    for block in small:
        libc.free(block)
    # In the heap, the small live blocks would pin every freed MiB in place.
    assert released >= 0.75 * size * count, f"only {released / 2**20:.1f} MiB went back"
