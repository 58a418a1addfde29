"""Arrays whose data start on a cache-line boundary (NumPy promises only 16 bytes), or at a
chosen offset within a page."""

import numpy as np

ALIGNMENT = 64
PAGE = 4096


def aligned_empty(shape, dtype, alignment=ALIGNMENT):
    """Return an uninitialised C-contiguous array whose data start at a multiple of `alignment`."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)


def aligned_copy(array, alignment=ALIGNMENT):
    """Return a C-contiguous copy of `array` with aligned data."""
    out = aligned_empty(array.shape, array.dtype, alignment)
    out[...] = array
    return out


def page_offset(array):
    """Where `array`'s data start within a page, in bytes."""
    return array.ctypes.data % PAGE


def zeros_at(size, dtype, offset):
    """Return zeros, a 1-D array of `size` whose data start `offset` bytes into a page.

    Large NumPy arrays all start at one offset within a page; a loop that stores into one
    and loads from another at the same offset waits on false dependencies (4K aliasing):
    an optimizer's state arrays placed apart from their weight's run its update up to 1.5x
    faster (BENCHMARKS.md)."""
    dtype = np.dtype(dtype)
    raw = np.zeros((size * dtype.itemsize + PAGE,), np.uint8)
    start = (offset - raw.ctypes.data) % PAGE
    return raw[start : start + size * dtype.itemsize].view(dtype)
