"""NaiveSequential: the book's stack of layers, applied in order."""

import json
import os

import numpy as np

from fastnaive import engine
from fastnaive._files import write_npz
from fastnaive._validation import as_inputs, positive_int
from fastnaive.layers import NaiveDense

__all__ = ["NaiveSequential", "FORMAT_VERSION"]

# The version of the .npz layout that save writes and fastnaive.load_model reads.
FORMAT_VERSION = 1

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
                raise TypeError(
                    f"Expected layers of type NaiveDense. "
                    f"Received: layers[{i}] of type {type(layer).__name__}"
                )
        for i, (prev, layer) in enumerate(zip(layers, layers[1:]), start=1):
            if prev.output_size != layer.input_size:
                raise ValueError(
                    f"Expected layers[{i}].input_size == layers[{i - 1}].output_size "
                    f"= {prev.output_size}. Received: {layer.input_size}"
                )
            if prev.dtype != layer.dtype:
                raise TypeError(
                    f"Expected every layer of dtype {layers[0].dtype}. "
                    f"Received: layers[{i}].dtype={layer.dtype}"
                )
            if prev.activation == "softmax":
                raise ValueError(
                    f"Expected softmax only on the last layer. "
                    f"Received: softmax on layers[{i - 1}] of {len(layers)}"
                )
        self.layers = layers
        self.stop_training = False

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

    def get_weights(self):
        """Copies of [W0, b0, W1, b1, ...]."""
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        """Copy `weights` ([W0, b0, ...], shapes as `self.weights`) into the model's arrays."""
        weights = list(weights)
        targets = self.weights
        if len(weights) != len(targets):
            raise ValueError(
                f"Expected {len(targets)} arrays, one per weight. Received: {len(weights)} arrays"
            )
        checked = []
        for i, (value, target) in enumerate(zip(weights, targets)):
            value = np.asarray(value)
            if value.shape != target.shape:
                raise ValueError(
                    f"Expected weights[{i}] of shape {target.shape}. "
                    f"Received: weights[{i}].shape={value.shape}"
                )
            if value.dtype.kind != "f":
                raise TypeError(
                    f"Expected weights[{i}] of a float dtype. "
                    f"Received: weights[{i}].dtype={value.dtype}"
                )
            checked.append(value)
        for value, target in zip(checked, targets):
            np.copyto(target, value, casting="same_kind")

    def architecture(self):
        """{"dtype": ..., "layers": [{"input_size", "output_size", "activation"}, ...]}."""
        return {
            "dtype": str(self.dtype),
            "layers": [
                {
                    "input_size": layer.input_size,
                    "output_size": layer.output_size,
                    "activation": layer.activation,
                }
                for layer in self.layers
            ],
        }

    def save(self, path):
        """Write the model to `path` (.npz) atomically; read it back with fastnaive.load_model.

        The file holds `fastnaive_format` (FORMAT_VERSION), `architecture` (JSON) and the
        arrays W0, b0, W1, b1, ...
        """
        arrays = {
            "fastnaive_format": np.array(FORMAT_VERSION),
            "architecture": np.array(json.dumps(self.architecture())),
        }
        for i, layer in enumerate(self.layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = layer.W, layer.b
        write_npz(os.fspath(path), arrays)

    def check_weights(self):
        """Raise if any layer's W or b lost its shape, dtype or layout."""
        for layer in self.layers:
            layer.check_weights()

    def __call__(self, inputs):
        """Return the model's outputs for inputs of shape (n, ...) flattening to input_size."""
        return self.predict(inputs)

    def predict(self, x, batch_size=_CHUNK_ROWS):
        """Return the model's outputs for x, computed batch_size rows at a time."""
        self.check_weights()
        x = as_inputs(x, self.input_size, self.dtype, name="x")
        chunk = min(positive_int(batch_size, "batch_size"), x.shape[0])
        out = np.empty((x.shape[0], self.output_size), dtype=self.dtype)
        step = engine.Step(self, chunk, x, training=False)
        with step.threads():
            return step.predict(x, out)

    def __repr__(self):
        inner = ",\n".join(f"    {layer!r}" for layer in self.layers)
        return f"NaiveSequential([\n{inner},\n])"
