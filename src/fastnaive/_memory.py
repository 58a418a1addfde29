"""Arrays whose data start on a cache-line boundary (NumPy promises only 16 bytes)."""

import numpy as np

ALIGNMENT = 64


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
