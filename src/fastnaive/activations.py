"""The activations a NaiveDense layer can apply, and how their names are resolved.

`relu` and `softmax` work on NumPy arrays, like `tf.nn.relu` and `tf.nn.softmax`
on tensors. A layer accepts either of them, the strings "relu", "softmax",
"linear" or None, or TensorFlow's and Keras' own relu and softmax functions,
recognised by name and module so that fastnaive never imports TensorFlow.
"""

import numpy as np

__all__ = ["relu", "softmax", "resolve"]

NAMES = ("relu", "softmax", None)
_FOREIGN_MODULES = ("tensorflow.", "keras.", "tf_keras.")
_STRING_NAMES = {"relu": "relu", "softmax": "softmax", "linear": None}
_FOREIGN_NAMES = {**_STRING_NAMES, "softmax_v2": "softmax"}


def relu(x):
    """relu(x) = max(x, 0), elementwise."""
    x = np.asarray(x)
    return np.where(x < 0, np.zeros((), x.dtype), x)


def softmax(x):
    """softmax(x)_j = exp(x_j - max(x)) / sum_k exp(x_k - max(x)), along the last axis."""
    x = np.asarray(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def resolve(activation):
    """Return the activation's name: "relu", "softmax" or None (linear)."""
    if activation is None or activation is relu or activation is softmax:
        return None if activation is None else activation.__name__
    if isinstance(activation, str) and activation.lower() in _STRING_NAMES:
        return _STRING_NAMES[activation.lower()]
    module = getattr(activation, "__module__", None) or ""
    name = getattr(activation, "__name__", None)
    if callable(activation) and module.startswith(_FOREIGN_MODULES) and name in _FOREIGN_NAMES:
        return _FOREIGN_NAMES[name]
    raise ValueError(
        "Expected activation to be fastnaive.relu, fastnaive.softmax, tf.nn.relu, "
        "tf.nn.softmax, 'relu', 'softmax', 'linear' or None. "
        f"Received: activation={activation!r}"
    )
