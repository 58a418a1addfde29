"""Optimizers that update the models' live weight arrays in place, as Keras' do.

Each update is one fused kernel over a weight array and its gradient. State
(velocities, moments) is kept per weight array, created at its first update.
"""
import math
import numbers

import numpy as np

from fastnaive import _kernels
from fastnaive._validation import learning_rate as checked_learning_rate

__all__ = ["SGD", "Adam", "get", "checked_pairs", "updater"]


def checked_pairs(grads_and_vars):
    """Return [(flat gradient, flat weight, weight)], checked to agree in shape and dtype."""
    pairs = []
    for i, (gradient, weight) in enumerate(grads_and_vars):
        if not (isinstance(weight, np.ndarray) and weight.dtype in (np.float32, np.float64)):
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
        pairs.append((gradient.reshape(-1), weight.reshape(-1), weight))
    return pairs


def _fraction(value, name):
    """Return value as a float in [0, 1), or raise naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not 0 <= value < 1:
        raise ValueError(f"Expected {name} in [0, 1). Received: {name}={value!r}")
    return float(value)


class Optimizer:
    """Base class: validated learning rate, per-weight state, apply_gradients."""

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate
        self.iterations = 0
        self._slots = {}

    @property
    def learning_rate(self):
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = checked_learning_rate(value)

    def _slot(self, weight, count):
        """The `count` state arrays of `weight`, zeros at first use."""
        key = id(weight)
        entry = self._slots.get(key)
        if entry is None or entry[0] is not weight:
            entry = (weight, [np.zeros(weight.size, weight.dtype) for _ in range(count)])
            self._slots[key] = entry
        return entry[1]

    def apply_gradients(self, grads_and_vars):
        """Update each weight array in place from its gradient; one optimizer step."""
        self.apply_checked(checked_pairs(grads_and_vars))

    def apply_checked(self, pairs):
        """One optimizer step on pairs from checked_pairs (checked once for many steps)."""
        self.iterations += 1
        for gradient, flat_weight, weight in pairs:
            self._update(gradient, flat_weight, weight)

    def _update(self, gradient, flat_weight, weight):
        raise NotImplementedError


class SGD(Optimizer):
    """w := w - learning_rate * g; with momentum, v := momentum * v - lr * g and w := w + v."""

    def __init__(self, learning_rate=1e-3, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        self.momentum = _fraction(momentum, "momentum")
        self.nesterov = bool(nesterov)

    def _update(self, gradient, flat_weight, weight):
        if self.momentum == 0:
            _kernels.axpy_checked(gradient, flat_weight, -self.learning_rate)
        else:
            (velocity,) = self._slot(weight, 1)
            _kernels.momentum_update_checked(flat_weight, gradient, velocity, self.learning_rate,
                                             self.momentum, self.nesterov)

    def __repr__(self):
        extra = f", momentum={self.momentum:g}, nesterov={self.nesterov}" if self.momentum else ""
        return f"SGD(learning_rate={self.learning_rate:g}{extra})"


class Adam(Optimizer):
    """Adam (Kingma & Ba), with Keras' bias correction folded into the step size."""

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1 = _fraction(beta_1, "beta_1")
        self.beta_2 = _fraction(beta_2, "beta_2")
        self.epsilon = checked_learning_rate(epsilon, "epsilon")

    def _update(self, gradient, flat_weight, weight):
        m, v = self._slot(weight, 2)
        t = self.iterations
        alpha = self.learning_rate * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        _kernels.adam_update_checked(flat_weight, gradient, m, v, alpha, self.beta_1,
                                     self.beta_2, self.epsilon)

    def __repr__(self):
        return (f"Adam(learning_rate={self.learning_rate:g}, beta_1={self.beta_1:g}, "
                f"beta_2={self.beta_2:g}, epsilon={self.epsilon:g})")


def get(name, learning_rate=None):
    """Return a new optimizer by name: "sgd", "momentum" (SGD, momentum 0.9) or "adam"."""
    makers = {"sgd": SGD, "momentum": lambda **kw: SGD(momentum=0.9, **kw), "adam": Adam}
    if name not in makers:
        raise ValueError(f"Expected optimizer 'sgd', 'momentum' or 'adam'. Received: {name!r}")
    return makers[name]() if learning_rate is None else makers[name](learning_rate=learning_rate)


def updater(optimizer, gradients, weights):
    """Return a function doing one step of `optimizer` on the arrays `gradients` and `weights`.

    For fastnaive's optimizers the arrays are checked here, once, not at every step; any
    other object with apply_gradients gets the pairs as Keras would pass them.
    """
    if isinstance(optimizer, Optimizer):
        pairs = checked_pairs(zip(gradients, weights))
        return lambda: optimizer.apply_checked(pairs)
    return lambda: optimizer.apply_gradients(zip(gradients, weights))
