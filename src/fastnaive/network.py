"""Network: a stack of layers applied in order, its weights, prediction and saving.

fastnaive.models.NaiveSequential is a Network with Keras' training methods (fit, evaluate,
...); the training layer takes any Network.
"""

import numpy as np

from fastnaive import _kernels, engine, losses, modelfile
from fastnaive._validation import positive_int
from fastnaive.layers import Dropout, NaiveDense
from fastnaive.sparse import as_model_inputs

__all__ = ["Network", "CHUNK_ROWS"]

# Rows per forward chunk: keeps a large input's hidden activations small.
CHUNK_ROWS = 2048


class Network:
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
        # The shape of each of `weights` and whether they are float64, for check_weights.
        self._shapes = [
            shape
            for layer in dense
            for shape in ((layer.input_size, layer.output_size), (layer.output_size,))
        ]
        self._double = dense[0].dtype == np.float64
        after = {
            id(prev): layer for prev, layer in zip(layers, layers[1:]) if isinstance(layer, Dropout)
        }
        # For each dense layer, the Dropout applied to its outputs, or None.
        self.dropouts = [after.get(id(layer)) for layer in dense]
        self.loss = losses.get(loss, dense[-1].activation)
        self.stop_training = False
        # The optimizer training it (fit sets it; callbacks read it, as in Keras).
        self.optimizer = None

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

    def save(self, path, metadata=None):
        """Write the model to `path` (.npz) atomically; read it back with fastnaive.load_model.

        The file (fastnaive.modelfile) holds the format version, the architecture (JSON; with
        `metadata`, a dict of plain values, under the key "metadata") and the arrays W0, b0,
        W1, b1, ... of the dense layers.
        """
        architecture = self.architecture()
        if metadata is not None:
            architecture["metadata"] = modelfile.checked_metadata(metadata)
        modelfile.write(path, architecture, self.weights)

    def check_weights(self):
        """Raise if any layer's W or b lost its shape, dtype or layout; return `weights`."""
        weights = self.weights
        if not _kernels.intact_weights(weights, self._shapes, self._double):
            for layer in self.dense_layers:
                layer.check_weights()
        return weights

    def __call__(self, inputs):
        """Return the model's outputs for inputs of shape (n, ...) flattening to input_size."""
        return self.predict(inputs)

    def predict(self, x, batch_size=CHUNK_ROWS):
        """Return the model's outputs for x, computed batch_size rows at a time."""
        self.check_weights()
        x = as_model_inputs(x, self.input_size, self.dtype, name="x")
        chunk = min(positive_int(batch_size, "batch_size"), x.shape[0])
        out = np.empty((x.shape[0], self.output_size), dtype=self.dtype)
        step = engine.Step(self, chunk, x, training=False)
        with step.threads():
            return step.predict(x, out)

    def count_params(self):
        """The number of weights: sum of W.size + b.size over the dense layers."""
        return sum(w.size for w in self.weights)

    def _summary_rows(self):
        """[(layer, output shape, activation, parameter count)] for each layer."""
        rows = []
        for layer in self.layers:
            if isinstance(layer, Dropout):
                rows.append((repr(layer), rows[-1][1], "", 0))
            else:
                params = layer.W.size + layer.b.size
                kind = f"NaiveDense{'+l2' if layer.l2 else ''}"
                shape = f"(None, {layer.output_size})"
                rows.append((kind, shape, layer.activation or "linear", params))
        return rows

    def summary(self, print_fn=None):
        """Print the layers as Keras' summary does: type, output shape, activation and
        parameter count, then the totals, the dtype and the loss. print_fn (default print)
        takes each line."""
        print_fn = print if print_fn is None else print_fn
        header = ("Layer (type)", "Output Shape", "Activation", "Param #")
        rows = [header] + [(k, s, a, f"{p:,}") for k, s, a, p in self._summary_rows()]
        widths = [max(len(row[i]) for row in rows) + 2 for i in range(4)]
        rule = "-" * sum(widths)
        total = self.count_params()
        size = total * self.dtype.itemsize
        name = type(self).__name__
        lines = [f'Model: "{name}" ({self.dtype}, loss {self.loss.name})', rule]
        for i, row in enumerate(rows):
            cells = [c.ljust(w) for c, w in zip(row[:3], widths)] + [row[3].rjust(widths[3])]
            lines.append("".join(cells).rstrip())
            if i == 0:
                lines.append(rule.replace("-", "="))
        lines += [
            rule,
            f"Total params: {total:,} ({_bytes(size)})",
            f"Trainable params: {total:,} ({_bytes(size)})",
            "Non-trainable params: 0 (0.00 B)",
        ]
        for line in lines:
            print_fn(line)

    def _repr_html_(self):
        """The summary as an HTML table, for Jupyter."""
        from html import escape

        cells = "".join(
            f"<tr><td>{escape(k)}</td><td>{escape(s)}</td><td>{escape(a)}</td>"
            f"<td style='text-align:right'>{p:,}</td></tr>"
            for k, s, a, p in self._summary_rows()
        )
        total = self.count_params()
        return (
            f"<div><b>{type(self).__name__}</b> ({self.dtype}, loss {escape(self.loss.name)})"
            "<table><thead><tr><th>Layer (type)</th><th>Output Shape</th><th>Activation</th>"
            f"<th>Param #</th></tr></thead><tbody>{cells}</tbody></table>"
            f"Total params: {total:,} ({_bytes(total * self.dtype.itemsize)})</div>"
        )

    def __repr__(self):
        inner = ",\n".join(f"    {layer!r}" for layer in self.layers)
        default = losses.get(None, self.dense_layers[-1].activation).name
        loss = f", loss={self.loss.name!r}" if self.loss.name != default else ""
        return f"{type(self).__name__}([\n{inner},\n]{loss})"


def _bytes(n):
    """n bytes in the largest unit that keeps a number >= 1, as Keras' summary shows them."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.2f} {unit}"
        n /= 1024
