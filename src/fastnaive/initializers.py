"""Initial weight matrices: the book's U[0, 0.1) and Keras' Glorot and He schemes."""

import math

import numpy as np

__all__ = ["initial_weights", "NAMES"]


def book(rng, shape, dtype):
    """W ~ U[0, 0.1), as the book draws it."""
    W = rng.uniform(0.0, 0.1, size=shape).astype(dtype)
    # Rounding to float32 can lift a draw just below 0.1 to float32(0.1) > 0.1.
    return np.minimum(W, np.nextafter(dtype.type(0.1), dtype.type(0)))


def glorot_uniform(rng, shape, dtype):
    """W ~ U[-l, l), l = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


def he_normal(rng, shape, dtype):
    """W ~ N(0, 2 / fan_in) truncated at two standard deviations, as Keras draws it."""
    stddev = math.sqrt(2.0 / shape[0]) / 0.87962566103423978  # the truncation's std factor
    W = rng.standard_normal(size=shape)
    outside = np.abs(W) > 2
    while outside.any():
        W[outside] = rng.standard_normal(size=int(outside.sum()))
        outside = np.abs(W) > 2
    return (W * stddev).astype(dtype)


NAMES = {"book": book, "glorot_uniform": glorot_uniform, "he_normal": he_normal}


def initial_weights(name, shape, dtype, rng):
    """Return a new (fan_in, fan_out) matrix drawn by the initializer `name`."""
    if name not in NAMES:
        raise ValueError(
            f"Expected initializer {', '.join(map(repr, NAMES))}. Received: initializer={name!r}"
        )
    return np.ascontiguousarray(NAMES[name](rng, shape, dtype))
