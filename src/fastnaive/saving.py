"""Saving a model to one .npz file, atomically, and loading it back without pickle.

The file holds `fastnaive_format` (the format version), `architecture` (JSON:
each layer's sizes and activation, and the dtype) and the arrays `W0`, `b0`,
`W1`, `b1`, ... It is written to a temporary file in the target's folder,
flushed to disk and renamed over the target, so a crash mid-save leaves the
previous file whole. Loading checks everything before building the model.
"""

import json
import os

import numpy as np

from fastnaive.layers import NaiveDense
from fastnaive.models import FORMAT_VERSION, NaiveSequential

__all__ = ["save_model", "load_model", "FORMAT_VERSION"]


def save_model(model, path):
    """Write `model` to `path` (.npz), replacing a file there only once the new one is whole."""
    if not isinstance(model, NaiveSequential):
        raise TypeError(f"Expected model to be a NaiveSequential. Received: {type(model).__name__}")
    model.save(path)


def _invalid(path, what):
    return ValueError(f"Expected a fastnaive model file. Received: {path!r}, {what}")


def _read_arrays(path):
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # a damaged file fails in many ways inside zipfile and NumPy
        raise _invalid(path, f"which cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise _invalid(path, "which holds a single array, not an .npz archive")
    try:
        with data:
            return {key: data[key] for key in data.files}
    except Exception as error:
        raise _invalid(
            path, f"which cannot be read as .npz ({type(error).__name__}: {error})"
        ) from error


def _checked_architecture(path, arrays):
    if "fastnaive_format" not in arrays or "architecture" not in arrays:
        raise _invalid(path, "which lacks the keys fastnaive_format and architecture")
    version = arrays["fastnaive_format"]
    if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
        raise _invalid(
            path, f"of format version {version!r}; this fastnaive reads {FORMAT_VERSION}"
        )
    try:
        architecture = json.loads(str(arrays["architecture"]))
        layers = [
            (spec["input_size"], spec["output_size"], spec["activation"])
            for spec in architecture["layers"]
        ]
        dtype = architecture["dtype"]
    except (ValueError, KeyError, TypeError) as error:
        raise _invalid(path, f"whose architecture is not valid ({error})") from error
    for i, (n_in, n_out, _) in enumerate(layers):
        shapes = {f"W{i}": (n_in, n_out), f"b{i}": (n_out,)}
        for key, shape in shapes.items():
            if key not in arrays or arrays[key].shape != shape:
                found = arrays[key].shape if key in arrays else "missing"
                raise _invalid(path, f"whose {key} is {found} where its architecture says {shape}")
    return layers, dtype


def load_model(path):
    """Return the NaiveSequential saved at `path` by save_model; nothing half-loaded on error."""
    path = os.fspath(path)
    arrays = _read_arrays(path)
    layer_specs, dtype = _checked_architecture(path, arrays)
    try:
        layers = [
            NaiveDense(n_in, n_out, activation, dtype=dtype)
            for n_in, n_out, activation in layer_specs
        ]
        model = NaiveSequential(layers)
        model.set_weights([arrays[f"{name}{i}"] for i in range(len(layers)) for name in "Wb"])
    except (KeyError, ValueError, TypeError) as error:
        raise _invalid(path, f"whose layers or weights do not agree ({error})") from error
    expected = {"fastnaive_format", "architecture"} | {
        f"{n}{i}" for i in range(len(layers)) for n in "Wb"
    }
    if set(arrays) != expected:
        raise _invalid(path, f"with unexpected keys {sorted(set(arrays) - expected)}")
    return model
