"""Memory given back to the system after a burst of large images.

glibc's malloc serves large blocks (a decoded image, its masks) from its heaps once its mmap threshold has
risen past them (it rises each time such a block is freed), and its heaps keep what is freed: after a burst the
idle service kept 1.9-2.5 GB (issue 29). A fixed threshold keeps every block of 1 MiB or more in a mapping of
its own, returned when freed, and a trim when the service falls idle returns what the heaps hold free. Elsewhere
than glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("app.allocator")

M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
LARGE_BLOCK_BYTES = 1 << 20


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc's, absent elsewhere
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def map_large_blocks(threshold: int = LARGE_BLOCK_BYTES) -> bool:
    """Large blocks in mappings of their own (returned to the system when freed); False where not glibc."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold)))


def trim() -> None:
    """Return the free memory at the top and inside malloc's heaps to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(ctypes.c_size_t(0))
