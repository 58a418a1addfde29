"""Read IDX files, the array format of the MNIST and Fashion-MNIST archives."""

import gzip
import math
import struct
import zlib

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
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
    raw = _read_bytes(path)
    dtype, shape, offset = _parse_header(raw, path)
    expected = math.prod(shape) * dtype.itemsize
    received = len(raw) - offset
    if received != expected:
        raise ValueError(
            f"Expected {expected} data bytes for shape {shape} in {path}. "
            f"Received: {received} bytes."
        )
    array = np.frombuffer(memoryview(raw)[offset:], dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _read_bytes(path):
    """Return the bytes of `path`, decompressed when they start with the gzip magic."""
    with open(path, "rb") as file:
        raw = file.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"Expected a valid gzip stream in {path}. Received: {exc}") from exc


def _parse_header(raw, path):
    """Return the dtype, shape and data offset stated by the IDX header in `raw`."""
    magic = raw[:4]
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _DTYPES or not magic[3]:
        raise ValueError(
            "Expected an IDX magic number 00 00 <type> <ndim> with type in 08 09 0b 0c 0d 0e "
            f"and ndim >= 1 in {path}. Received: {magic.hex(' ') or 'an empty file'}."
        )
    offset = 4 + 4 * magic[3]
    if len(raw) < offset:
        raise ValueError(
            f"Expected {offset} header bytes for {magic[3]} dimensions in {path}. "
            f"Received: {len(raw)} bytes."
        )
    shape = struct.unpack(f">{magic[3]}I", raw[4:offset])
    return _DTYPES[magic[2]], shape, offset
