"""Saving a model to one .npz file, atomically, and loading it back without pickle.

The file (fastnaive.modelfile) holds `fastnaive_format` (the format version), `architecture`
(JSON: the dtype, the loss, each dense layer's sizes, activation and L2 weight, each
Dropout's rate and seed, and optionally `metadata`: what the model was trained on) and the
dense layers' arrays `W0`, `b0`, `W1`, `b1`, ... Version 1 files (0.1.0: dense layers only)
load too; a reader that ignores `metadata` (0.1.x's) reads version 2 files that hold it. It
is written to a temporary file in the target's folder, flushed to disk and renamed over the
target, so a crash mid-save leaves the previous file whole. Loading checks the names,
headers and sizes of the arrays before reading their data, and everything before building
the model.
"""

from fastnaive import modelfile
from fastnaive._validation import path as checked_path
from fastnaive.models import NaiveSequential
from fastnaive.network import Network

__all__ = ["save_model", "load_model", "read_metadata", "FORMAT_VERSION"]

FORMAT_VERSION = modelfile.FORMAT_VERSION


def save_model(model, path, *, metadata=None):
    """Write `model` to `path` (.npz), replacing a file there only once the new one is whole.

    `metadata`, a dict of str keys and str, int, float, bool or None values (the command
    line records the dataset and the input scaling the model was trained on), is stored
    with the architecture; read_metadata reads it back.
    """
    if not isinstance(model, Network):
        raise TypeError(f"Expected model to be a NaiveSequential. Received: {type(model).__name__}")
    model.save(checked_path(path), metadata=metadata)


def read_metadata(path):
    """Return the metadata dict saved with the model at `path` ({} when it holds none)."""
    return modelfile.read_metadata(path)


def load_model(path):
    """Return the NaiveSequential saved at `path` by save_model; nothing half-loaded on error.

    Every array's header is checked against the architecture before its data is read, and a
    file declaring more data than MAX_INFLATION times its size is refused unread.
    """
    layers, loss, weights = modelfile.read(path)
    try:
        model = NaiveSequential(layers, loss=loss)
        model.set_weights(weights)
    except (ValueError, TypeError) as error:
        raise modelfile.invalid(path, f"whose layers or weights do not agree ({error})") from error
    return model
