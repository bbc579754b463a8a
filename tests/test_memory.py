"""`memory.return_freed_memory`: freed large blocks leave the process at once.

The measurement runs in a fresh interpreter: glibc's heap and its mmap
threshold are process-wide, so in the test process they would depend on what
earlier tests allocated, and setting the threshold would change later tests.
"""

import subprocess
import sys
import textwrap

import pytest

_MEASURE = textwrap.dedent("""
    import ctypes, os, sys
    from fcn_graph.host.memory import return_freed_memory

    def rss_bytes():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    use_threshold = sys.argv[1] == "1"
    if use_threshold:
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
    before = rss_bytes()
    for block in big:
        libc.free(block)
    print(before - rss_bytes())
""")


def _released_bytes(use_threshold):
    done = subprocess.run([sys.executable, "-c", _MEASURE, "1" if use_threshold else "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_blocks_go_back_between_live_small_ones():
    size, count = 1 << 20, 64
    released = _released_bytes(True)
    # In the heap, the small live blocks would pin every freed MiB in place.
    assert released >= 0.75 * size * count, f"only {released / 2**20:.1f} MiB went back"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_without_the_threshold_the_heap_keeps_them():
    # The same allocations without return_freed_memory: the measurement can tell.
    size, count = 1 << 20, 64
    assert _released_bytes(False) < 0.25 * size * count
