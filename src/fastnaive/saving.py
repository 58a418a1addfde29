"""Saving a model to one .npz file, atomically, and loading it back without pickle.

The file holds `fastnaive_format` (the format version), `architecture` (JSON:
the dtype, the loss, each dense layer's sizes, activation and L2 weight, each
Dropout's rate and seed) and the dense layers' arrays `W0`, `b0`, `W1`, `b1`,
... Version 1 files (0.1.0: dense layers only) load too. It is written to a temporary
file in the target's folder, flushed to disk and renamed over the target, so a crash
mid-save leaves the previous file whole. Loading checks the names, headers and sizes of
the arrays before reading their data (fastnaive._files.NpzReader), and everything before
building the model.
"""

import json

from fastnaive._files import BadArchive, NpzReader
from fastnaive._validation import as_dtype, positive_int
from fastnaive._validation import path as checked_path
from fastnaive.layers import Dropout, NaiveDense
from fastnaive.models import FORMAT_VERSION, NaiveSequential

__all__ = ["save_model", "load_model", "FORMAT_VERSION"]

# The format versions load_model reads.
READABLE = (1, FORMAT_VERSION)
DENSE_KEYS = {"type", "input_size", "output_size", "activation", "l2"}
DROPOUT_KEYS = {"type", "rate", "seed"}


def save_model(model, path):
    """Write `model` to `path` (.npz), replacing a file there only once the new one is whole."""
    if not isinstance(model, NaiveSequential):
        raise TypeError(f"Expected model to be a NaiveSequential. Received: {type(model).__name__}")
    model.save(checked_path(path))


def _invalid(path, what):
    return ValueError(f"Expected a fastnaive model file. Received: {path!r}, {what}")


def _checked_architecture(path, archive):
    """Return (layer specs, dtype, loss), read from the file's two small arrays before any
    weight is; raise unless they are what save_model writes. A spec is ("dense", input_size,
    output_size, activation, l2) or ("dropout", rate, seed)."""
    if not {"fastnaive_format", "architecture"} <= set(archive.keys):
        raise _invalid(path, "which lacks the keys fastnaive_format and architecture")
    for key, kinds in (("fastnaive_format", "iu"), ("architecture", "U")):
        shape, dtype = archive.header(key)
        if shape != () or dtype.kind not in kinds:
            raise _invalid(path, f"whose {key} is an array of shape {shape} and dtype {dtype}")
    arrays = archive.read(["fastnaive_format", "architecture"])
    version = int(arrays["fastnaive_format"])
    if version not in READABLE:
        raise _invalid(path, f"of format version {version}; this fastnaive reads {READABLE}")
    try:
        architecture = json.loads(str(arrays["architecture"]))
        specs = [_layer_spec(spec, version) for spec in architecture["layers"]]
        dtype = as_dtype(architecture["dtype"])
        loss = architecture["loss"] if version > 1 else None
    except RecursionError:
        raise _invalid(path, "whose architecture is nested too deeply to be valid") from None
    except (ValueError, KeyError, TypeError) as error:
        raise _invalid(path, f"whose architecture is not valid ({error!r})") from error
    return specs, dtype, loss


def _layer_spec(spec, version):
    """One layer's entry of the architecture JSON as a tuple, its sizes checked."""
    kind = spec.get("type", "dense") if version > 1 else "dense"
    keys = {"dense": DENSE_KEYS, "dropout": DROPOUT_KEYS}.get(kind)
    if version > 1 and set(spec) != keys:
        raise ValueError(f"expected a layer with the keys {sorted(keys or ())}, got {spec!r}")
    if kind == "dropout":
        return kind, spec["rate"], spec["seed"]
    sizes = (
        positive_int(spec["input_size"], "input_size"),
        positive_int(spec["output_size"], "output_size"),
    )
    activation = spec["activation"]
    if not (activation is None or isinstance(activation, str)):
        raise TypeError(f"activation {activation!r} is not a name")
    return kind, *sizes, activation, spec.get("l2", 0.0)


def _checked_weights(path, archive, specs, dtype):
    """Return [W0, b0, W1, b1, ...], each read once its header agrees with the architecture."""
    shapes = {}
    dense = [spec for spec in specs if spec[0] == "dense"]
    for i, (_, n_in, n_out, _, _) in enumerate(dense):
        shapes[f"W{i}"], shapes[f"b{i}"] = (n_in, n_out), (n_out,)
    unexpected = set(archive.keys) - set(shapes) - {"fastnaive_format", "architecture"}
    if unexpected:
        raise _invalid(path, f"with unexpected keys {sorted(unexpected)}")
    for key, shape in shapes.items():
        if key not in archive.keys:
            raise _invalid(path, f"whose {key} is missing where its architecture says {shape}")
        found, found_dtype = archive.header(key)
        if found != shape:
            raise _invalid(path, f"whose {key} is {found} where its architecture says {shape}")
        if found_dtype.kind != "f":
            raise _invalid(path, f"whose {key} is of dtype {found_dtype}, not float")
    arrays = archive.read(list(shapes))
    return [arrays[key] for key in shapes]


def _layer(spec, dtype):
    if spec[0] == "dropout":
        return Dropout(spec[1], seed=spec[2])
    _, n_in, n_out, activation, l2 = spec
    return NaiveDense(n_in, n_out, activation, dtype=dtype, l2=l2)


def load_model(path):
    """Return the NaiveSequential saved at `path` by save_model; nothing half-loaded on error.

    Every array's header is checked against the architecture before its data is read, and a
    file declaring more data than MAX_INFLATION times its size is refused unread.
    """
    path = checked_path(path)
    try:
        with NpzReader(path) as archive:
            specs, dtype, loss = _checked_architecture(path, archive)
            weights = _checked_weights(path, archive, specs, dtype)
    except BadArchive as error:
        raise _invalid(path, f"which is {error}") from error
    try:
        model = NaiveSequential([_layer(spec, dtype) for spec in specs], loss=loss)
        model.set_weights(weights)
    except (ValueError, TypeError) as error:
        raise _invalid(path, f"whose layers or weights do not agree ({error})") from error
    return model
