"""Process memory: glibc's heap behaviour (no TensorFlow import here, so an
ONNX Runtime process can use it too)."""

import ctypes

# glibc's mallopt parameter number for M_MMAP_THRESHOLD (malloc.h).
_M_MMAP_THRESHOLD = -3


def return_freed_memory(threshold=32 * 2**20):
    """Have glibc serve every allocation of `threshold` bytes or more with its
    own mapping (M_MMAP_THRESHOLD, fixed instead of glibc's sliding one), so
    that a large freed activation goes back to the system at once instead of
    staying in the heap, where the next call's differently sized tensors
    cannot always reuse it. Process-wide; the commands call it, a library
    user may. A lower threshold returns more memory but costs a page fault
    per page of every smaller tensor on every call. Returns False where there
    is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
