"""Optimizers that update the models' live weight arrays in place."""
import numpy as np

from fastnaive import _kernels
from fastnaive._validation import learning_rate as checked_learning_rate

__all__ = ["SGD"]


def _checked_pairs(grads_and_vars):
    """Return [(gradient, weight)] as flat views, checked to agree in shape and dtype."""
    pairs = []
    for i, (gradient, weight) in enumerate(grads_and_vars):
        if not (isinstance(weight, np.ndarray) and weight.dtype.kind == "f"
                and weight.dtype.itemsize in (4, 8)):
            raise TypeError(f"Expected weights[{i}] to be a float32 or float64 NumPy array. "
                            f"Received: {type(weight).__name__} "
                            f"of dtype {getattr(weight, 'dtype', None)}")
        if not (weight.flags.c_contiguous and weight.flags.writeable):
            raise ValueError(f"Expected weights[{i}] to be writeable and C-contiguous. "
                             f"Received: c_contiguous={weight.flags.c_contiguous}, "
                             f"writeable={weight.flags.writeable}")
        gradient = np.asarray(gradient)
        if gradient.shape != weight.shape:
            raise ValueError(f"Expected gradients[{i}] of shape {weight.shape}, its weight's. "
                             f"Received: gradients[{i}].shape={gradient.shape}")
        if gradient.dtype.kind not in "iuf":
            raise TypeError(f"Expected gradients[{i}] of a real dtype. "
                            f"Received: gradients[{i}].dtype={gradient.dtype}")
        gradient = np.ascontiguousarray(gradient, dtype=weight.dtype)
        pairs.append((gradient.reshape(-1), weight.reshape(-1)))
    return pairs


class SGD:
    """w := w - learning_rate * g, for every (g, w) pair."""

    def __init__(self, learning_rate=1e-3):
        self.learning_rate = checked_learning_rate(learning_rate)

    def apply_gradients(self, grads_and_vars):
        """Update each weight array in place from its gradient, as Keras' optimizer does."""
        for gradient, weight in _checked_pairs(grads_and_vars):
            _kernels.axpy_checked(gradient, weight, -self.learning_rate)

    def __repr__(self):
        return f"SGD(learning_rate={self.learning_rate:g})"
