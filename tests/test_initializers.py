"""Initial weights: the book's U[0, 0.1), Glorot uniform and He normal truncated as in Keras.

The statistical checks use one (784, 512) or (784, 256) matrix, 2e5 to 4e5 draws;
each margin is at least 5 standard errors of its statistic, so a correct
initializer fails for fewer than one seed in 100,000, while a wrong fan (fan_out
for fan_in) or a wrong scale misses by far more.
"""

import math

import numpy as np
import pytest

from fastnaive import NaiveDense
from fastnaive.initializers import NAMES, initial_weights

FAN_IN, FAN_OUT = 784, 512


@pytest.fixture
def dtype(dtype):
    """conftest's dtype as a NumPy dtype."""
    return np.dtype(dtype)


def draw(name, dtype, shape=(FAN_IN, FAN_OUT), seed=0):
    W = initial_weights(name, shape, dtype, np.random.default_rng(seed))
    assert W.shape == shape and W.dtype == dtype and W.flags.c_contiguous
    return W


def test_book_is_uniform_in_0_to_a_tenth(dtype):
    W = draw("book", dtype)
    assert 0 <= W.min() < 1e-4 and 0.1 - 1e-4 < W.max() < 0.1
    assert abs(W.mean(dtype=np.float64) - 0.05) < 5 * 0.1 / math.sqrt(12 * W.size)


class DrawsJustBelowATenth:
    """A generator whose uniform draws are all the largest float64 below 0.1."""

    def uniform(self, low, high, size):
        return np.full(size, np.nextafter(0.1, 0.0))


def test_book_stays_below_a_tenth_after_rounding(dtype):
    """float32(nextafter(0.1, 0)) rounds up to float32(0.1) > 0.1."""
    W = initial_weights("book", (3, 2), dtype, DrawsJustBelowATenth())
    assert W.max() < 0.1


def test_glorot_uniform_fills_its_limits_with_the_right_variance(dtype):
    W = draw("glorot_uniform", dtype)
    limit = math.sqrt(6 / (FAN_IN + FAN_OUT))
    assert -dtype.type(limit) <= W.min() < -0.999 * limit
    assert 0.999 * limit < W.max() <= dtype.type(limit)
    variance = limit**2 / 3  # 2 / (fan_in + fan_out); the sample variance's standard error is 0.14%
    assert abs(np.var(W, dtype=np.float64) / variance - 1) < 0.01
    assert abs(W.mean(dtype=np.float64)) < 5 * math.sqrt(variance / W.size)


def test_he_normal_is_truncated_at_two_deviations_with_std_of_fan_in(dtype):
    """Keras' truncated normal: std sqrt(2 / fan_in) after cutting N(0, s) at 2 s."""
    W = draw("he_normal", dtype, shape=(FAN_IN, 256))
    std = math.sqrt(2 / FAN_IN)
    cut = 2 * std / 0.87962566103423978  # the std of N(0, 1) cut at +-2 is 0.8796...
    assert 0.99 * cut < np.abs(W).max() <= dtype.type(cut)
    assert abs(np.std(W, dtype=np.float64) / std - 1) < 0.01  # standard error 0.13%
    assert abs(W.mean(dtype=np.float64)) < 5 * std / math.sqrt(W.size)


@pytest.mark.parametrize("name", NAMES)
def test_seed_makes_draws_reproducible(dtype, name):
    first, again, other = (draw(name, dtype, (20, 10), seed) for seed in (1, 1, 2))
    np.testing.assert_array_equal(first, again)  # exact: the same draws
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("name", NAMES)
def test_dense_layer_draws_with_its_initializer(dtype, name):
    layer = NaiveDense(20, 10, "relu", dtype=dtype, seed=3, initializer=name)
    np.testing.assert_array_equal(layer.W, draw(name, dtype, (20, 10), seed=3))  # exact: same draws


def test_unknown_initializer_raises():
    message = (
        r"^Expected initializer 'book', 'glorot_uniform', 'he_normal'\. "
        r"Received: initializer='zeros'$"
    )
    with pytest.raises(ValueError, match=message):
        draw("zeros", np.dtype("float32"))
    with pytest.raises(ValueError, match=message):
        NaiveDense(3, 2, "relu", initializer="zeros")
