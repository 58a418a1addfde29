"""NaiveSequential: the book's stack of layers, applied in order."""
import numpy as np

from fastnaive import _kernels
from fastnaive._validation import as_inputs
from fastnaive.layers import NaiveDense

__all__ = ["NaiveSequential"]

# Rows per forward chunk: keeps a large input's hidden activations small.
_CHUNK_ROWS = 2048


class NaiveSequential:
    """outputs = layers[-1](...layers[0](inputs)); probabilities when the last layer is softmax."""

    def __init__(self, layers):
        layers = list(layers)
        if not layers:
            raise ValueError("Expected at least one layer. Received: layers=[]")
        for i, layer in enumerate(layers):
            if not isinstance(layer, NaiveDense):
                raise TypeError(f"Expected layers of type NaiveDense. "
                                f"Received: layers[{i}] of type {type(layer).__name__}")
        for i, (prev, layer) in enumerate(zip(layers, layers[1:]), start=1):
            if prev.output_size != layer.input_size:
                raise ValueError(f"Expected layers[{i}].input_size == layers[{i - 1}].output_size "
                                 f"= {prev.output_size}. Received: {layer.input_size}")
            if prev.dtype != layer.dtype:
                raise TypeError(f"Expected every layer of dtype {layers[0].dtype}. "
                                f"Received: layers[{i}].dtype={layer.dtype}")
            if prev.activation == "softmax":
                raise ValueError(f"Expected softmax only on the last layer. "
                                 f"Received: softmax on layers[{i - 1}] of {len(layers)}")
        self.layers = layers

    @property
    def weights(self):
        """[W0, b0, W1, b1, ...], the layers' live arrays."""
        return [w for layer in self.layers for w in layer.weights]

    @property
    def dtype(self):
        """The dtype of every layer's weights."""
        return self.layers[0].dtype

    @property
    def input_size(self):
        return self.layers[0].input_size

    @property
    def output_size(self):
        return self.layers[-1].output_size

    def check_weights(self):
        """Raise if any layer's W or b lost its shape, dtype or layout."""
        for layer in self.layers:
            layer.check_weights()

    def __call__(self, inputs):
        """Return the model's outputs for inputs of shape (n, ...) flattening to input_size."""
        self.check_weights()
        x = as_inputs(inputs, self.input_size, self.dtype, name="inputs")
        out = np.empty((x.shape[0], self.output_size), dtype=self.dtype)
        hidden = [np.empty((min(_CHUNK_ROWS, x.shape[0]), layer.output_size), dtype=self.dtype)
                  for layer in self.layers[:-1]]
        for start in range(0, x.shape[0], _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, x.shape[0])
            a = x[start:stop]
            buffers = [h[:stop - start] for h in hidden] + [out[start:stop]]
            for layer, z in zip(self.layers, buffers):
                _kernels.dense_forward_checked(a, layer.W, layer.b, layer.activation == "relu", z)
                a = z
        if self.layers[-1].activation == "softmax":
            _kernels.softmax_checked(out, out)
        return out

    def __repr__(self):
        inner = ",\n".join(f"    {layer!r}" for layer in self.layers)
        return f"NaiveSequential([\n{inner},\n])"
