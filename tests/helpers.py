"""Plain helpers shared by the test modules: tolerances, small models and data, arrays, sparse
layouts and MNIST-layout files. The fixtures are in conftest.py."""

import functools
import gzip
import io
import json
import struct
import zlib

import numpy as np

import fastnaive
from fastnaive import _activations, _losses, _sparse

# Tolerances

DTYPES = ["float32", "float64"]
# fastnaive and its NumPy oracles (fastnaive.reference, or float64 NumPy for the sparse
# products) sum in different orders (BLAS blocking, FMA). Over up to 784 terms of O(1), the
# largest gaps seen in float32 (eps 6e-8) and float64 (eps 1e-16) are:
# - kernels against the reference: 5e-7 and 1e-15, margins of 20 and 100;
# - sparse products against float64 NumPy: ~1e-6 and ~1e-15;
# - models against the reference: 1.3e-6 on float32 logits of up to 4 and 3e-15, hardly widened
#   by a few SGD steps, margins of at least 10.
TOLERANCES = {
    "float32": {"rtol": 1e-5, "atol": 1e-5},
    "float64": {"rtol": 1e-13, "atol": 1e-13},
}


def assert_close(actual, expected, dtype=None, err_msg=""):
    """assert_allclose within TOLERANCES[dtype], by default the dtype of `actual`."""
    dtype = np.asarray(actual).dtype if dtype is None else np.dtype(dtype)
    np.testing.assert_allclose(actual, expected, err_msg=err_msg, **TOLERANCES[dtype.name])


def assert_scaled_close(actual, expected, rtol, atol=0.0):
    """Assert max|a - b| <= rtol * max|b| + atol: the error against b's own scale."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    error, scale = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
    assert error <= rtol * scale + atol, (
        f"max|a - b| = {error:.3g} > {rtol:g} * max|b| + {atol:.3g} (max|b| = {scale:.3g})"
    )


# The ReLU case of the activations' backward kernel: delta := delta * (A > 0).
RELU_BACKWARD = functools.partial(_activations.activation_backward_checked, _activations.RELU)


# Models and data

# The book's 784 -> 512 -> 10 MLP with a narrow hidden layer.
N_FEATURES, N_HIDDEN, N_CLASSES = 28 * 28, 16, 10
# An error message names what was expected, then what was received.
EXPECTED_RECEIVED = r"^Expected .+\. Received: "


def loss_kernel(code, n_threads=1):
    """fastnaive._losses.loss_and_hits for the loss `code`, as a function of (logits, targets,
    grad_out, sample_weight=None, scale=None) that returns the loss alone."""

    def kernel(logits, targets, grad_out, sample_weight=None, scale=None):
        return _losses.loss_and_hits(
            code, logits, targets, grad_out, sample_weight, scale, n_threads, False
        )[0]

    return kernel


SPARSE_SOFTMAX_CROSSENTROPY = loss_kernel(_losses.SPARSE_CATEGORICAL)


def make_model(dtype="float32", last="softmax"):
    """A relu -> `last` MLP with weights of both signs, so that relu masks some hidden units."""
    model = fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(N_FEATURES, N_HIDDEN, "relu", dtype=dtype),
            fastnaive.NaiveDense(N_HIDDEN, N_CLASSES, last, dtype=dtype),
        ]
    )
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight[...] = rng.normal(0.0, 0.1, weight.shape)
    return model


def make_data(n_samples=50, dtype="float32"):
    """Standard normal images for make_model, and random labels."""
    rng = np.random.default_rng(1)
    return (
        rng.standard_normal((n_samples, N_FEATURES)).astype(dtype),
        rng.integers(0, N_CLASSES, n_samples),
    )


def assert_same_weights(model, expected):
    for actual, wanted in zip(model.weights, expected.weights, strict=True):
        assert_close(actual, wanted, model.dtype.name)


def random_model(sizes, last_activation, dtype, seed):
    """relu layers then `last_activation`, W ~ N(0, 2 / fan_in) and b ~ N(0, 0.01).

    He-scaled weights keep the logits of [0, 1) inputs within about ten units
    of each other, so every probability stays far inside Keras' clip interval.
    """
    rng = np.random.default_rng(seed)
    layers = [
        fastnaive.NaiveDense(n_in, n_out, "relu", dtype=dtype)
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1])
    ]
    layers.append(fastnaive.NaiveDense(sizes[-2], sizes[-1], last_activation, dtype=dtype))
    for layer in layers:
        layer.W = rng.normal(0, np.sqrt(2 / layer.input_size), layer.W.shape).astype(dtype)
        layer.b = rng.normal(0, 0.1, layer.b.shape).astype(dtype)
    return fastnaive.NaiveSequential(layers)


class Unfused:
    """An optimizer whose steps run as a caller's apply_gradients would run them: after the
    gradients, over the whole of them (fit's path for any object with apply_gradients)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def apply_gradients(self, grads_and_vars):
        self.optimizer.apply_gradients(grads_and_vars)


# Arrays


def read_only(array):
    array.setflags(write=False)
    return array


def f32(*shape):
    return np.zeros(shape, np.float32)


def normal(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


# (alpha, beta) of dW := alpha * X.T @ delta + beta * dW: the plain gradient over a NaN
# buffer (beta = 0 must overwrite), the fused SGD update W := W - lr * dW, any pair.
SCALES = {
    "beta0-over-nan": (1.0, 0.0),
    "sgd-update": (-0.1, 1.0),
    "alpha-beta": (0.5, -2.0),
}


# Sparse layouts


def by_rows(X, n_threads=None, offsets=None):
    """X (X - offsets, if given) grouped by rows, for sparse_forward_checked."""
    buffers = _sparse.group_buffers(X.shape[0], X.shape[1], X.dtype, by_rows=True)
    nonzeros = np.count_nonzero(X if offsets is None else X - offsets)
    assert _sparse.group_rows_checked(X, *buffers, n_threads, offsets=offsets) == nonzeros
    return buffers


def by_columns(X, n_threads=None, offsets=None):
    """X (X - offsets, if given) grouped by columns, for sparse_param_grad_checked."""
    buffers = _sparse.group_buffers(X.shape[1], X.shape[0], X.dtype, by_rows=False)
    nonzeros = np.count_nonzero(X if offsets is None else X - offsets)
    assert _sparse.group_columns_checked(X, *buffers, n_threads, offsets=offsets) == nonzeros
    return buffers


# MNIST-layout files

KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def synthetic(seed=0):
    """Return a small MNIST-shaped dataset (6 train, 4 test images) as a dict of uint8 arrays."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 6, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 4, dtype=np.uint8),
    }


def idx_bytes(array):
    """Return `array` encoded as an IDX file."""
    header = bytes([0, 0, IDX_CODES[array.dtype.str[1:]], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_folder(folder, data, gz=False, sep="-"):
    """Write the four IDX files of `data` into `folder`, plain or gzipped, and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in IDX_NAMES.items():
        raw = idx_bytes(data[key])
        name = name.replace("-idx", f"{sep}idx")
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return folder


def write_npz(file, data):
    """Write `data` as a Keras-layout .npz file and return its path."""
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(file, **data)
    return file


def assert_loaded(result, data):
    """Assert that a load_data() result equals `data` exactly, as uint8 arrays."""
    (x_train, y_train), (x_test, y_test) = result
    for key, array in zip(KEYS, (x_train, y_train, x_test, y_test)):
        assert array.dtype == np.uint8, key
        assert array.shape == data[key].shape, key
        np.testing.assert_array_equal(array, data[key], err_msg=key)


# Hostile files (docs/robustness.md, class 7): small files that declare or inflate to much more


@functools.cache
def deflated_zeros(n_bytes):
    """A raw deflate stream (level 9) of n_bytes zero bytes: about n_bytes / 1030 bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(min(n_bytes, 1 << 24))
    parts = [
        compressor.compress(chunk[: min(len(chunk), n_bytes - i)])
        for i in range(0, n_bytes, len(chunk))
    ]
    return b"".join(parts) + compressor.flush()


def deflated(prefix, n_zeros=0):
    """(raw deflate stream, CRC-32, size) of `prefix` followed by n_zeros zero bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_SYNC_FLUSH)
    crc, chunk = zlib.crc32(prefix), bytes(min(max(n_zeros, 1), 1 << 24))
    for start in range(0, n_zeros, len(chunk)):
        crc = zlib.crc32(chunk[: min(len(chunk), n_zeros - start)], crc)
    return head + (deflated_zeros(n_zeros) if n_zeros else b"\x03\x00"), crc, len(prefix) + n_zeros


def npy_header(shape, dtype):
    """The bytes of an .npy header declaring `shape` and `dtype`, whatever data follows."""
    out = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(out, header)
    return out.getvalue()


def npy_bytes(array):
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def write_zip(path, members):
    """Write a zip archive of `members` {name: bytes (stored) or (deflate, crc, size)}; the
    sizes it declares are the true ones, so zipfile reads it as a valid archive."""
    local, central = io.BytesIO(), io.BytesIO()
    for name, member in members.items():
        if isinstance(member, bytes):
            data, crc, size, method = member, zlib.crc32(member), len(member), 0
        else:
            (data, crc, size), method = member, 8
        fields = struct.pack("<HHHHHIII", 20, 0, method, 0, 0x21, crc, len(data), size)
        encoded = name.encode()
        offset = local.tell()
        local.write(b"PK\x03\x04" + fields + struct.pack("<HH", len(encoded), 0) + encoded + data)
        central.write(
            b"PK\x01\x02"
            + struct.pack("<H", 20)
            + fields
            + struct.pack("<HHHHHII", len(encoded), 0, 0, 0, 0, 0, offset)
            + encoded
        )
    n = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, central.tell(), local.tell(), 0)
    path.write_bytes(local.getvalue() + central.getvalue() + end)
    return path


def write_gzip(path, member):
    """Write the gzip file of `member` = (raw deflate, crc, size)."""
    data, crc, size = member
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    path.write_bytes(header + data + struct.pack("<II", crc, size % 2**32))
    return path


def model_members(n_in, n_out, **members):
    """The stored members of a model file of one float32 dense layer n_in -> n_out (sizes that
    its W0 and b0 must then have), with `members` added or replacing them."""
    architecture = fastnaive.NaiveSequential([fastnaive.NaiveDense(1, 1, None)]).architecture()
    architecture["layers"][0].update(input_size=n_in, output_size=n_out)
    stored = {
        "fastnaive_format.npy": npy_bytes(np.array(fastnaive.saving.FORMAT_VERSION)),
        "architecture.npy": npy_bytes(np.array(json.dumps(architecture))),
        "b0.npy": npy_bytes(np.zeros(n_out, np.float32))
        if n_out < 2**20
        else npy_header((n_out,), "<f4"),
    }
    return {**stored, **members}
