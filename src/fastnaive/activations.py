"""The activations a NaiveDense layer can apply, and how their names are resolved.

The functions here work on NumPy arrays, like TensorFlow's on tensors. A layer accepts
them, their names as Keras spells them ("relu", "tanh", "sigmoid", "gelu", "leaky_relu",
"elu", "softmax", "linear" or None; "gelu_tanh" for GELU's tanh approximation), or
TensorFlow's and Keras' own functions of those names, recognised by name and module so
that fastnaive never imports TensorFlow. Parameters are Keras' defaults: leaky_relu's
negative slope 0.2, elu's alpha 1. softmax is for the last layer only. The kernels know
each by its code (CODES, fastnaive._activations).
"""

import functools
import math

import numpy as np

from fastnaive import _activations

__all__ = [
    "relu",
    "tanh",
    "sigmoid",
    "gelu",
    "gelu_tanh",
    "leaky_relu",
    "elu",
    "softmax",
    "resolve",
    "NAMES",
    "CODES",
]

LEAKY_SLOPE, ELU_ALPHA = 0.2, 1.0


def relu(x):
    """relu(x) = max(x, 0), elementwise."""
    x = np.asarray(x)
    return np.where(x < 0, np.zeros((), x.dtype), x)


def tanh(x):
    """tanh(x), elementwise."""
    return np.tanh(x)


def sigmoid(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), elementwise."""
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def gelu(x):
    """gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))), elementwise (exact)."""
    x = np.asarray(x)
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1 + erf(x / math.sqrt(2)))).astype(x.dtype)


def gelu_tanh(x):
    """gelu(x) ~ 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), elementwise."""
    x = np.asarray(x)
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def leaky_relu(x):
    """leaky_relu(x) = x if x >= 0 else 0.2 x, elementwise."""
    x = np.asarray(x)
    return np.where(x < 0, x * x.dtype.type(LEAKY_SLOPE), x)


def elu(x):
    """elu(x) = x if x >= 0 else exp(x) - 1, elementwise."""
    x = np.asarray(x)
    return np.where(x < 0, ELU_ALPHA * np.expm1(np.minimum(x, 0)), x).astype(x.dtype)


def softmax(x):
    """softmax(x)_j = exp(x_j - max(x)) / sum_k exp(x_k - max(x)), along the last axis."""
    x = np.asarray(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


FUNCTIONS = {
    "relu": relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "softmax": softmax,
}
NAMES = (*FUNCTIONS, None)
# Each elementwise activation's kernel code; softmax has none (a row operation).
CODES = {
    None: _activations.LINEAR,
    "relu": _activations.RELU,
    "tanh": _activations.TANH,
    "sigmoid": _activations.SIGMOID,
    "gelu": _activations.GELU,
    "gelu_tanh": _activations.GELU_TANH,
    "leaky_relu": _activations.LEAKY_RELU,
    "elu": _activations.ELU,
}
_FOREIGN_MODULES = ("tensorflow.", "keras.", "tf_keras.")
_FOREIGN_NAMES = {**{name: name for name in FUNCTIONS}, "softmax_v2": "softmax", "linear": None}


def resolve(activation):
    """Return the activation's name (one of NAMES; None for linear)."""
    if activation is None:
        return None
    for name, function in FUNCTIONS.items():
        if activation is function:
            return name
    if isinstance(activation, str):
        key = activation.lower()
        if key in FUNCTIONS or key == "linear":
            return None if key == "linear" else key
    if (
        isinstance(activation, functools.partial)
        and not activation.args
        and set(activation.keywords) == {"approximate"}
    ):
        # Keras' and TensorFlow's gelu(x, approximate=True) is the tanh form.
        base = resolve(activation.func)
        if base == "gelu":
            return "gelu_tanh" if activation.keywords["approximate"] else "gelu"
    module = getattr(activation, "__module__", None) or ""
    name = getattr(activation, "__name__", None)
    if callable(activation) and module.startswith(_FOREIGN_MODULES) and name in _FOREIGN_NAMES:
        return _FOREIGN_NAMES[name]
    raise ValueError(
        f"Expected activation to be one of {[n for n in NAMES if n]}, 'linear' or None, as a "
        f"name, a fastnaive.activations function or TensorFlow's or Keras' function of that "
        f"name. Received: activation={activation!r}"
    )
