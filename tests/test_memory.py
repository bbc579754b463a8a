"""`memory.return_freed_memory`: large blocks get mappings of their own, so a
freed one leaves the process at once.

The measurement runs in a fresh interpreter (glibc's heap and its mmap
threshold are process-wide, so in the test process they would depend on what
earlier tests allocated, and setting the threshold would change later tests),
and reads glibc's own accounting (`mallinfo2`: bytes in mapped blocks) rather
than the resident size, which the kernel may also shrink by reclaiming pages.
"""

import subprocess
import sys
import textwrap

import pytest

_MEASURE = textwrap.dedent("""
    import ctypes, sys
    from fcn_graph.host.memory import return_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        print("no-mallinfo2")
        sys.exit(0)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "1":
        assert return_freed_memory(threshold=1 << 20) is True
    size, count = 1 << 20, 64
    # glibc by default raises its mapping threshold to the size of a freed
    # mapped block: after this, 1 MiB blocks would come from the heap.
    libc.free(libc.malloc(8 * size))
    start = libc.mallinfo2().hblkhd
    big, small = [], []
    for _ in range(count):  # 1 MiB blocks, each followed by a small block that stays
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        big.append(block)
        small.append(libc.malloc(64))
    mapped = libc.mallinfo2().hblkhd - start
    for block in big:
        libc.free(block)
    print(mapped, libc.mallinfo2().hblkhd - start)
""")


def _mapped_bytes(use_threshold):
    """(bytes of the 1 MiB blocks in mappings of their own, those left after freeing)."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, "1" if use_threshold else "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    if done.stdout.strip() == "no-mallinfo2":
        pytest.skip("glibc without mallinfo2")
    mapped, left = (int(word) for word in done.stdout.split())
    return mapped, left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_blocks_go_back_between_live_small_ones():
    size, count = 1 << 20, 64
    mapped, left = _mapped_bytes(True)
    # Each block in a mapping of its own, unmapped (returned) when freed, however the
    # small live blocks between them lie.
    assert mapped >= size * count, f"only {mapped / 2**20:.1f} MiB in their own mappings"
    assert left == 0, f"{left / 2**20:.1f} MiB still mapped after freeing"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_without_the_threshold_the_blocks_come_from_the_heap():
    # The same allocations without return_freed_memory: the measurement can tell.
    mapped, _ = _mapped_bytes(False)
    assert mapped < 1 << 20
