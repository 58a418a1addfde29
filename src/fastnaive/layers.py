"""NaiveDense, the book's fully connected layer with live NumPy weights, and Dropout."""

import numbers

import numpy as np

from fastnaive import _activations, _kernels, activations, initializers
from fastnaive._memory import aligned_copy
from fastnaive._validation import as_dtype, as_inputs, positive_int
from fastnaive._validation import seed as checked_seed

__all__ = ["NaiveDense", "Dropout"]


class NaiveDense:
    """outputs = activation(inputs @ W + b), with W ~ U[0, 0.1) and b = 0 as in the book.

    `initializer` chooses W's distribution: "book" (U[0, 0.1)), "glorot_uniform"
    or "he_normal" (see fastnaive.initializers).

    `W` (input_size, output_size) and `b` (output_size,) are NumPy arrays that
    training updates in place: writing into them changes the model. Assigning a
    new array checks its shape, dtype and layout.

    `l2` adds l2 * sum(W**2) to the loss, as Keras' kernel_regularizer=L2(l2) does
    (scikit-learn's alpha is l2 = alpha / (2 * batch_size)); b is not penalised.
    """

    def __init__(
        self,
        input_size,
        output_size,
        activation,
        *,
        dtype="float32",
        seed=None,
        initializer="book",
        l2=0.0,
    ):
        self.input_size = positive_int(input_size, "input_size")
        self.output_size = positive_int(output_size, "output_size")
        self.activation = activations.resolve(activation)
        self.l2 = _non_negative(l2, "l2")
        self.dtype = as_dtype(dtype)
        # Aligned to a cache line: the sparse first-layer kernels run 25-30% faster on it.
        self.W = aligned_copy(
            initializers.initial_weights(
                initializer,
                (self.input_size, self.output_size),
                self.dtype,
                seed
                if isinstance(seed, np.random.Generator)
                else np.random.default_rng(checked_seed(seed)),
            )
        )
        self.b = np.zeros(self.output_size, dtype=self.dtype)

    @property
    def W(self):
        """The weight matrix, (input_size, output_size)."""
        return self._W

    @W.setter
    def W(self, value):
        self._W = self._checked_weight(value, "W", (self.input_size, self.output_size))

    @property
    def b(self):
        """The bias vector, (output_size,)."""
        return self._b

    @b.setter
    def b(self, value):
        self._b = self._checked_weight(value, "b", (self.output_size,))

    @property
    def weights(self):
        """[W, b], the live arrays, in that order."""
        return [self._W, self._b]

    def check_weights(self):
        """Raise if W or b no longer has the layer's shape, dtype and layout."""
        self._checked_weight(self._W, "W", (self.input_size, self.output_size))
        self._checked_weight(self._b, "b", (self.output_size,))

    def _checked_weight(self, value, name, shape):
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"Expected {name} to be a NumPy array. Received: {type(value).__name__}"
            )
        if value.shape != shape:
            raise ValueError(
                f"Expected {name} of shape {shape}. Received: {name}.shape={value.shape}"
            )
        if value.dtype != self.dtype:
            raise TypeError(
                f"Expected {name} of dtype {self.dtype}, the layer's. "
                f"Received: {name}.dtype={value.dtype} "
                f"(convert it with .astype(np.{self.dtype}))"
            )
        flags = value.flags
        if not (flags.c_contiguous and flags.writeable and flags.aligned):
            raise ValueError(
                f"Expected {name} to be a writeable, aligned, C-contiguous array. "
                f"Received: {name}.flags: c_contiguous={value.flags.c_contiguous}, "
                f"writeable={value.flags.writeable}, aligned={value.flags.aligned}"
            )
        return value

    def __call__(self, inputs):
        """Return activation(inputs @ W + b) for inputs (n, ...) that flatten to input_size."""
        self.check_weights()
        x = as_inputs(inputs, self.input_size, self.dtype, name="inputs")
        out = np.empty((x.shape[0], self.output_size), dtype=self.dtype)
        _kernels.dense_forward_checked(x, self._W, self._b, self.code, out)
        if self.activation == "softmax":
            _kernels.softmax_checked(out, out)
        return out

    @property
    def code(self):
        """The activation's kernel code; softmax's is linear (it is applied to whole rows)."""
        return activations.CODES.get(self.activation, _activations.LINEAR)

    def __repr__(self):
        l2 = f", l2={self.l2:g}" if self.l2 else ""
        return (
            f"NaiveDense({self.input_size} -> {self.output_size}, "
            f"{self.activation or 'linear'}, {self.dtype}{l2})"
        )


class Dropout:
    """Inverted dropout after a NaiveDense: in training, each output is zeroed with
    probability `rate` and the others scaled by 1 / (1 - rate); outside training, identity.

    The mask is a hash of (seed, the optimizer's step, the sample's row in the batch, the
    unit), so a run is reproducible and independent of the thread and process counts.
    seed None draws one.
    """

    def __init__(self, rate, seed=None):
        rate = _non_negative(rate, "rate")
        if not rate < 1:
            raise ValueError(f"Expected rate in [0, 1). Received: rate={rate!r}")
        self.rate = rate
        seed = checked_seed(seed)
        self.seed = int(np.random.SeedSequence().entropy % 2**63) if seed is None else seed

    def __call__(self, inputs):
        """The identity: dropout acts only in training."""
        return inputs

    def __repr__(self):
        return f"Dropout({self.rate:g})"


def _non_negative(value, name):
    """Return value as a finite float >= 0, or raise naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} to be a real number. Received: {name}={value!r}")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"Expected {name} to be finite and >= 0. Received: {name}={value!r}")
    return float(value)
