"""Read IDX files, the array format of the MNIST and Fashion-MNIST archives.

The header is read first and the size it declares checked against the file before any data
is read: a plain file must hold exactly that many bytes; a gzipped one may declare at most
MAX_INFLATION times its size, and is decompressed only that far (plus one byte, to tell a
stream that holds more than its header says).
"""

import gzip
import math
import os
import struct
import zlib

import numpy as np

from fastnaive._files import MAX_INFLATION, inflation_limit

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path):
    """Return the array held by the IDX file at `path`, plain or gzipped, in native byte order."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        gzipped = file.read(2) == _GZIP_MAGIC
        file.seek(0)
        if not gzipped:
            return _read(file, path, size, gzipped)
        try:
            with gzip.GzipFile(fileobj=file) as stream:
                return _read(stream, path, size, gzipped)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"Expected a valid gzip stream in {path}. Received: {exc}") from exc


def _read(stream, path, size, gzipped):
    """Return the array in the IDX `stream` of a file of `size` bytes, its size checked first."""
    dtype, shape = _parse_header(stream, path)
    offset = 4 + 4 * len(shape)
    expected = math.prod(shape) * dtype.itemsize
    if not gzipped and size - offset != expected:
        raise ValueError(
            f"Expected {expected} data bytes for shape {shape} in {path}. "
            f"Received: {size - offset} bytes."
        )
    if gzipped and expected > inflation_limit(size):
        raise ValueError(
            f"Expected at most {MAX_INFLATION} times its {size} bytes from the gzip stream in "
            f"{path}. Received: a header declaring {expected} data bytes for shape {shape}."
        )
    data = np.empty(expected, np.uint8)
    for start in range(0, expected, _CHUNK):
        chunk = stream.read(min(_CHUNK, expected - start))
        data[start : start + len(chunk)] = np.frombuffer(chunk, np.uint8)
        if len(chunk) != min(_CHUNK, expected - start):
            raise ValueError(
                f"Expected {expected} data bytes for shape {shape} in {path}. "
                f"Received: {start + len(chunk)} bytes."
            )
    if stream.read(1):
        raise ValueError(
            f"Expected {expected} data bytes for shape {shape} in {path}. "
            f"Received: more than {expected} bytes."
        )
    return data.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _parse_header(stream, path):
    """Return the dtype and shape stated by the IDX header at the start of `stream`."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _DTYPES or not magic[3]:
        raise ValueError(
            "Expected an IDX magic number 00 00 <type> <ndim> with type in 08 09 0b 0c 0d 0e "
            f"and ndim >= 1 in {path}. Received: {magic.hex(' ') or 'an empty file'}."
        )
    dims = stream.read(4 * magic[3])
    if len(dims) < 4 * magic[3]:
        raise ValueError(
            f"Expected {4 + 4 * magic[3]} header bytes for {magic[3]} dimensions in {path}. "
            f"Received: {4 + len(dims)} bytes."
        )
    return _DTYPES[magic[2]], struct.unpack(f">{magic[3]}I", dims)
