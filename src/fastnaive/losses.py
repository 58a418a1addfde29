"""The losses a NaiveSequential trains with, named as Keras names them, and their targets.

Each loss knows which head activation it absorbs (computed exactly from the logits:
softmax for the cross-entropies, sigmoid for binary cross-entropy), how targets are checked
and converted once per call, and its code for the kernel that computes it, its gradient and
its accuracy's hits in one pass (fastnaive._losses.loss_and_hits). A last layer without the
absorbed activation is taken to output logits, as the book's loss does with a linear last
layer.
"""

import numpy as np

from fastnaive import _losses
from fastnaive._validation import as_labels

__all__ = ["Loss", "get", "NAMES"]


class Loss:
    """A loss: name, the head it absorbs, its targets, its kernel's code and its accuracy."""

    def __init__(self, name, absorbs, code, metric="accuracy"):
        self.name, self.absorbs, self.code, self.metric = name, absorbs, code, metric

    @property
    def sparse_labels(self):
        """True when targets are class indices (one int per sample)."""
        return self.name == "sparse_categorical_crossentropy"

    def targets(self, y, n_samples, n_outputs, dtype, name="labels"):
        """Return y checked and converted for this loss: class indices, or (n, n_outputs)."""
        if self.sparse_labels:
            return as_labels(y, n_samples, n_outputs, name=name)
        return _as_targets(
            y, n_samples, n_outputs, dtype, name, probabilities=self.name != "mean_squared_error"
        )

    def hits_per_sample(self, n_outputs):
        """How many hits a sample can score: one, or one per output (binary)."""
        return n_outputs if self.name == "binary_crossentropy" else 1

    def __repr__(self):
        return f"Loss({self.name!r})"


def _as_targets(y, n_samples, n_outputs, dtype, name, probabilities):
    """Return y as a C-contiguous (n_samples, n_outputs) array of dtype; (n,) for one output."""
    t = np.asarray(y)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"Expected {name} of a real number dtype. Received: {name}.dtype={t.dtype}")
    if t.ndim == 1 and n_outputs == 1:
        t = t.reshape(-1, 1)
    if t.shape != (n_samples, n_outputs):
        raise ValueError(
            f"Expected {name} of shape ({n_samples}, {n_outputs}), one row of "
            f"targets per sample. Received: {name}.shape={np.shape(y)}"
        )
    t = np.ascontiguousarray(t, dtype=dtype)
    if probabilities and t.size and not (t.min() >= 0 and t.max() <= 1):
        raise ValueError(
            f"Expected {name} in [0, 1] (probabilities). Received: {name} in [{t.min()}, {t.max()}]"
        )
    return t


_LOSSES = {
    "sparse_categorical_crossentropy": lambda: Loss(
        "sparse_categorical_crossentropy", "softmax", _losses.SPARSE_CATEGORICAL
    ),
    "categorical_crossentropy": lambda: Loss(
        "categorical_crossentropy", "softmax", _losses.CATEGORICAL
    ),
    "binary_crossentropy": lambda: Loss("binary_crossentropy", "sigmoid", _losses.BINARY),
    "mean_squared_error": lambda: Loss(
        "mean_squared_error", None, _losses.MEAN_SQUARED, metric=None
    ),
}
_ALIASES = {"mse": "mean_squared_error"}
NAMES = (*_LOSSES, *_ALIASES)


def get(name, head):
    """Return the Loss named `name` (None: the default for the `head` activation), checked
    against the last layer's activation."""
    if name is None:
        name = "binary_crossentropy" if head == "sigmoid" else "sparse_categorical_crossentropy"
    key = _ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in _LOSSES:
        raise ValueError(f"Expected loss in {NAMES}. Received: loss={name!r}")
    loss = _LOSSES[key]()
    # A softmax head has no elementwise derivative; a sigmoid one is not a softmax's.
    if (
        head == "softmax" or head == "sigmoid" and loss.absorbs == "softmax"
    ) and head != loss.absorbs:
        raise ValueError(
            f"Expected a last layer without {head} for loss {key!r}. Received: a {head} last layer"
        )
    return loss
