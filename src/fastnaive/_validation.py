"""Checks and conversions at the Python boundary, done once per public call.

Kernels run without bounds checks: every shape, dtype, layout and label range
they rely on is established here, with errors that name the argument, state
what was expected and show what was received.
"""

import math
import numbers
import os

import numpy as np

from fastnaive import _losses

# BLAS takes 32-bit signed sizes.
MAX_BLAS_DIM = 2**31 - 1
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_dtype(dtype):
    """Return `dtype` as float32 or float64, the two the kernels are compiled for."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in DTYPES:
        raise TypeError(f"Expected dtype 'float32' or 'float64'. Received: dtype={dtype!r}")
    return resolved


def positive_int(value, name, minimum=1):
    """Return `value` as an int >= minimum, or raise naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {name} to be an integer. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"Expected {name} >= {minimum}. Received: {name}={value!r}")
    if value > MAX_BLAS_DIM:
        raise ValueError(
            f"Expected {name} <= {MAX_BLAS_DIM} (32-bit BLAS sizes). Received: {name}={value!r}"
        )
    return int(value)


def seed(value, name="seed"):
    """Return `value` as None or an int in [0, 2**63), the seeds a checkpoint can store."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {name} to be None or an integer. Received: {name}={value!r}")
    if not 0 <= value < 2**63:
        raise ValueError(f"Expected {name} in [0, 2**63). Received: {name}={value!r}")
    return int(value)


def path(value, name="path"):
    """Return `value` (a str or os.PathLike naming a str path) as a str; bytes paths are refused."""
    if isinstance(value, (str, os.PathLike)):
        value = os.fspath(value)
        if isinstance(value, str):
            return value
    raise TypeError(
        f"Expected {name} to be a str or os.PathLike path (not bytes). Received: {name}={value!r}"
    )


def learning_rate(value, name="learning_rate"):
    """Return `value` as a finite float > 0, or raise naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} to be a real number. Received: {name}={value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Expected {name} to be finite and > 0. Received: {name}={value!r}")
    return float(value)


def as_inputs(images, n_features, dtype, name="images"):
    """Return `images` as a C-contiguous (n, n_features) array of `dtype`; copy only if needed."""
    x = np.asarray(images)
    if x.dtype.kind not in "iuf":
        raise TypeError(
            f"Expected {name} of a real number dtype (integer or float). "
            f"Received: {name}.dtype={x.dtype}"
        )
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"Expected {name} of shape (n_samples, ...) with n_samples >= 1. "
            f"Received: {name}.shape={x.shape}"
        )
    if math.prod(x.shape[1:]) != n_features:
        raise ValueError(
            f"Expected {name} whose samples have {n_features} values, the model's "
            f"input size. Received: {name}.shape={x.shape}"
        )
    if x.shape[0] > MAX_BLAS_DIM:
        raise ValueError(
            f"Expected at most {MAX_BLAS_DIM} samples (32-bit BLAS sizes). "
            f"Received: {name}.shape={x.shape}"
        )
    if x.ndim > 2:
        x = x.reshape(x.shape[0], n_features)
    return np.ascontiguousarray(x, dtype=dtype)


def as_labels(labels, n_samples, n_classes, name="labels"):
    """Return integer `labels` as a C-contiguous intp array of n_samples in [0, n_classes)."""
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        raise TypeError(
            f"Expected {name} of an integer dtype (class indices). Received: {name}.dtype={y.dtype}"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise ValueError(
            f"Expected {name} of shape ({n_samples},), one per image. "
            f"Received: {name}.shape={y.shape}"
        )
    indices = np.ascontiguousarray(y, dtype=np.intp)
    if not _losses.labels_in_range(indices, n_classes):
        low, high = y.min(), y.max()
        bad = low if low < 0 else high
        raise ValueError(
            f"Expected {name} in [0, {n_classes}). "
            f"Received: {name}.{'min' if low < 0 else 'max'}()={bad}"
        )
    return indices
