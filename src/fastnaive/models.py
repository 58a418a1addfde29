"""NaiveSequential: the book's stack of layers, applied in order."""

import json

import numpy as np

from fastnaive import engine, losses
from fastnaive._files import write_npz
from fastnaive._validation import positive_int
from fastnaive.layers import Dropout, NaiveDense
from fastnaive.sparse import as_model_inputs

__all__ = ["NaiveSequential", "FORMAT_VERSION"]

# The version of the .npz layout that save writes; fastnaive.load_model reads 1 and 2.
FORMAT_VERSION = 2

# Rows per forward chunk: keeps a large input's hidden activations small.
_CHUNK_ROWS = 2048


class NaiveSequential:
    """outputs = layers[-1](...layers[0](inputs)); probabilities when the last layer is softmax.

    `layers` are NaiveDense layers, with at most one Dropout after any but the last.
    `loss` is the training loss as Keras names it: "sparse_categorical_crossentropy" (the
    default, or "binary_crossentropy" for a sigmoid last layer), "categorical_crossentropy",
    "binary_crossentropy", "mean_squared_error" or "mse" (fastnaive.losses).
    """

    def __init__(self, layers, loss=None):
        layers = list(layers)
        if not layers:
            raise ValueError("Expected at least one layer. Received: layers=[]")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (NaiveDense, Dropout)):
                raise TypeError(
                    f"Expected layers of type NaiveDense or Dropout. "
                    f"Received: layers[{i}] of type {type(layer).__name__}"
                )
        for i, layer in enumerate(layers):
            if isinstance(layer, Dropout) and not (
                0 < i < len(layers) - 1 and isinstance(layers[i - 1], NaiveDense)
            ):
                raise ValueError(
                    f"Expected a Dropout only right after a NaiveDense that is not the last "
                    f"layer. Received: Dropout at layers[{i}] of {len(layers)}"
                )
        dense = [layer for layer in layers if isinstance(layer, NaiveDense)]
        for i, (prev, layer) in enumerate(zip(dense, dense[1:]), start=1):
            if prev.output_size != layer.input_size:
                raise ValueError(
                    f"Expected dense layer {i}'s input_size == dense layer {i - 1}'s "
                    f"output_size = {prev.output_size}. Received: {layer.input_size}"
                )
            if prev.dtype != layer.dtype:
                raise TypeError(
                    f"Expected every layer of dtype {dense[0].dtype}. "
                    f"Received: dense layer {i} of dtype {layer.dtype}"
                )
            if prev.activation == "softmax":
                raise ValueError(
                    f"Expected softmax only on the last layer. "
                    f"Received: softmax on dense layer {i - 1} of {len(dense)}"
                )
        self.layers = layers
        # The stack is fixed at construction, as Keras' Sequential is once built.
        self.dense_layers = dense
        after = {
            id(prev): layer for prev, layer in zip(layers, layers[1:]) if isinstance(layer, Dropout)
        }
        # For each dense layer, the Dropout applied to its outputs, or None.
        self.dropouts = [after.get(id(layer)) for layer in dense]
        self.loss = losses.get(loss, dense[-1].activation)
        self.stop_training = False

    @property
    def weights(self):
        """[W0, b0, W1, b1, ...], the dense layers' live arrays."""
        return [w for layer in self.dense_layers for w in layer.weights]

    @property
    def dtype(self):
        """The dtype of every layer's weights."""
        return self.dense_layers[0].dtype

    @property
    def input_size(self):
        return self.dense_layers[0].input_size

    @property
    def output_size(self):
        return self.dense_layers[-1].output_size

    def get_weights(self):
        """Copies of [W0, b0, W1, b1, ...]."""
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        """Copy `weights` ([W0, b0, ...], shapes as `self.weights`) into the model's arrays.

        A value that overlaps any of the model's arrays (its own weights, in any order) is
        copied first, so the result is that of copies whatever the order of the copying.
        """
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
            if any(np.may_share_memory(value, t) for t in targets):
                value = value.copy()
            checked.append(value)
        for value, target in zip(checked, targets):
            np.copyto(target, value, casting="same_kind")

    def architecture(self):
        """{"dtype", "loss", "layers": [{"type": "dense", "input_size", "output_size",
        "activation", "l2"} or {"type": "dropout", "rate", "seed"}, ...]}."""
        specs = []
        for layer in self.layers:
            if isinstance(layer, Dropout):
                specs.append({"type": "dropout", "rate": layer.rate, "seed": layer.seed})
            else:
                specs.append(
                    {
                        "type": "dense",
                        "input_size": layer.input_size,
                        "output_size": layer.output_size,
                        "activation": layer.activation,
                        "l2": layer.l2,
                    }
                )
        return {"dtype": str(self.dtype), "loss": self.loss.name, "layers": specs}

    def save(self, path):
        """Write the model to `path` (.npz) atomically; read it back with fastnaive.load_model.

        The file holds `fastnaive_format` (FORMAT_VERSION), `architecture` (JSON) and the
        arrays W0, b0, W1, b1, ... of the dense layers.
        """
        arrays = {
            "fastnaive_format": np.array(FORMAT_VERSION),
            "architecture": np.array(json.dumps(self.architecture())),
        }
        for i, layer in enumerate(self.dense_layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = layer.W, layer.b
        write_npz(path, arrays)

    def check_weights(self):
        """Raise if any layer's W or b lost its shape, dtype or layout."""
        for layer in self.dense_layers:
            layer.check_weights()

    def __call__(self, inputs):
        """Return the model's outputs for inputs of shape (n, ...) flattening to input_size."""
        return self.predict(inputs)

    def predict(self, x, batch_size=_CHUNK_ROWS):
        """Return the model's outputs for x, computed batch_size rows at a time."""
        self.check_weights()
        x = as_model_inputs(x, self.input_size, self.dtype, name="x")
        chunk = min(positive_int(batch_size, "batch_size"), x.shape[0])
        out = np.empty((x.shape[0], self.output_size), dtype=self.dtype)
        step = engine.Step(self, chunk, x, training=False)
        with step.threads():
            return step.predict(x, out)

    def __repr__(self):
        inner = ",\n".join(f"    {layer!r}" for layer in self.layers)
        default = losses.get(None, self.dense_layers[-1].activation).name
        loss = f", loss={self.loss.name!r}" if self.loss.name != default else ""
        return f"NaiveSequential([\n{inner},\n]{loss})"
