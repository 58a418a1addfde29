"""The model file: one .npz, written atomically and read back without pickle.

The file holds `fastnaive_format` (the format version), `architecture` (JSON:
the dtype, the loss, each dense layer's sizes, activation and L2 weight, each
Dropout's rate and seed, and optionally `metadata`: what the model was trained on)
and the dense layers' arrays `W0`, `b0`, `W1`, `b1`, ... Version 1 files (0.1.0:
dense layers only) load too; a reader that ignores `metadata` (0.1.x's) reads
version 2 files that hold it. It is written to a temporary
file in the target's folder, flushed to disk and renamed over the target, so a crash
mid-save leaves the previous file whole. Loading checks the names, headers and sizes of
the arrays before reading their data (fastnaive._files.NpzReader), and everything before
building the layers. fastnaive.saving is the public face of it (save_model, load_model).
"""

import json
import math

import numpy as np

from fastnaive._files import BadArchive, NpzReader, write_npz
from fastnaive._validation import as_dtype, positive_int
from fastnaive._validation import path as checked_path
from fastnaive.layers import Dropout, NaiveDense

__all__ = ["FORMAT_VERSION", "write", "read", "read_metadata", "checked_metadata", "invalid"]

# The version of the layout that write writes; read reads 1 and 2.
FORMAT_VERSION = 2
READABLE = (1, FORMAT_VERSION)
DENSE_KEYS = {"type", "input_size", "output_size", "activation", "l2"}
DROPOUT_KEYS = {"type", "rate", "seed"}


def write(path, architecture, weights):
    """Write `architecture` (a JSON-able dict) and `weights` [W0, b0, W1, b1, ...] to the
    .npz `path`, replacing a file there only once the new one is whole."""
    arrays = {
        "fastnaive_format": np.array(FORMAT_VERSION),
        "architecture": np.array(json.dumps(architecture, allow_nan=False)),
    }
    for i in range(0, len(weights), 2):
        arrays[f"W{i // 2}"], arrays[f"b{i // 2}"] = weights[i], weights[i + 1]
    write_npz(checked_path(path), arrays)


def read_metadata(path):
    """Return the metadata dict saved with the model at `path` ({} when it holds none)."""
    path = checked_path(path)
    try:
        with NpzReader(path) as archive:
            return _checked_architecture(path, archive)[3]
    except BadArchive as error:
        raise invalid(path, f"which is {error}") from error


def checked_metadata(metadata):
    """`metadata` as a new dict, if its keys are str and its values plain JSON scalars."""
    if not isinstance(metadata, dict):
        raise TypeError(
            f"Expected metadata to be a dict. Received: metadata of type {type(metadata).__name__}"
        )
    for key, value in metadata.items():
        plain = value is None or isinstance(value, (bool, int, str))
        if not isinstance(key, str) or not (
            plain or (isinstance(value, float) and math.isfinite(value))
        ):
            raise ValueError(
                "Expected metadata of str keys and str, int, finite float, bool or None "
                f"values. Received: metadata[{key!r}]={value!r}"
            )
    return dict(metadata)


def invalid(path, what):
    return ValueError(f"Expected a fastnaive model file. Received: {path!r}, {what}")


def _checked_architecture(path, archive):
    """Return (layer specs, dtype, loss, metadata), read from the file's two small arrays
    before any weight is; raise unless they are what save_model writes. A spec is ("dense",
    input_size, output_size, activation, l2) or ("dropout", rate, seed)."""
    if not {"fastnaive_format", "architecture"} <= set(archive.keys):
        raise invalid(path, "which lacks the keys fastnaive_format and architecture")
    for key, kinds in (("fastnaive_format", "iu"), ("architecture", "U")):
        shape, dtype = archive.header(key)
        if shape != () or dtype.kind not in kinds:
            raise invalid(path, f"whose {key} is an array of shape {shape} and dtype {dtype}")
    arrays = archive.read(["fastnaive_format", "architecture"])
    version = int(arrays["fastnaive_format"])
    if version not in READABLE:
        raise invalid(path, f"of format version {version}; this fastnaive reads {READABLE}")
    try:
        architecture = json.loads(str(arrays["architecture"]))
        specs = [_layer_spec(spec, version) for spec in architecture["layers"]]
        dtype = as_dtype(architecture["dtype"])
        loss = architecture["loss"] if version > 1 else None
        metadata = checked_metadata(architecture.get("metadata", {})) if version > 1 else {}
    except RecursionError:
        raise invalid(path, "whose architecture is nested too deeply to be valid") from None
    except (ValueError, KeyError, TypeError) as error:
        raise invalid(path, f"whose architecture is not valid ({error!r})") from error
    return specs, dtype, loss, metadata


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
        raise invalid(path, f"with unexpected keys {sorted(unexpected)}")
    for key, shape in shapes.items():
        if key not in archive.keys:
            raise invalid(path, f"whose {key} is missing where its architecture says {shape}")
        found, found_dtype = archive.header(key)
        if found != shape:
            raise invalid(path, f"whose {key} is {found} where its architecture says {shape}")
        if found_dtype.kind != "f":
            raise invalid(path, f"whose {key} is of dtype {found_dtype}, not float")
    arrays = archive.read(list(shapes))
    return [arrays[key] for key in shapes]


def _layer(spec, dtype):
    if spec[0] == "dropout":
        return Dropout(spec[1], seed=spec[2])
    _, n_in, n_out, activation, l2 = spec
    return NaiveDense(n_in, n_out, activation, dtype=dtype, l2=l2)


def read(path):
    """Return (layers, loss name or None, weights [W0, b0, ...]) of the model file at `path`.

    Every array's header is checked against the architecture before its data is read, and a
    file declaring more data than MAX_INFLATION times its size is refused unread.
    """
    path = checked_path(path)
    try:
        with NpzReader(path) as archive:
            specs, dtype, loss, _ = _checked_architecture(path, archive)
            weights = _checked_weights(path, archive, specs, dtype)
    except BadArchive as error:
        raise invalid(path, f"which is {error}") from error
    try:
        layers = [_layer(spec, dtype) for spec in specs]
    except (ValueError, TypeError) as error:
        raise invalid(path, f"whose layers do not agree ({error})") from error
    return layers, loss, weights
