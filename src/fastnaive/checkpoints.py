"""Checkpoints of a training run: the model and the optimizer's state after an epoch.

A checkpoint folder holds `model-EEEE.npz` (the model after E epochs, as save_model writes
it) and `state.npz`, which names that file and holds the epochs done, the shuffling seed,
the optimizer's class and its state (Optimizer.get_state: `iterations` and the arrays
`slot{i}_{k}`, the k-th state array of weight i), and optionally the History so far
(JSON). Both are written atomically, the model first, so a crash at any point leaves a
checkpoint that resumes: the previous one or the new one. fastnaive.training writes one
after every epoch when fit is given a folder (or a BackupAndRestore), and resumes from it
on any number of processes.

A name read from a state file is never trusted as a path: only a `model-EEEE.npz` of the
folder is ever read or removed. A run that does not resume refuses a folder that already
holds a checkpoint (check_fresh) rather than replace it.
"""

import json
import os
import re

import numpy as np

from fastnaive import modelfile
from fastnaive._files import BadArchive, NpzReader, write_npz

__all__ = ["STATE_FILE", "save", "load", "has_checkpoint", "check_fresh", "clear"]

STATE_FILE = "state.npz"
_MODEL_NAME = re.compile(r"model-\d{4,}\.npz")
_SLOT_KEY = re.compile(r"slot(\d{1,9})_(\d{1,9})")
# The state's scalars: (dtype kinds, lowest value); strings have no bound.
_SCALARS = {
    "model": ("U", None),
    "optimizer": ("U", None),
    "epochs_done": ("iu", 0),
    "seed": ("iu", 0),
    "iterations": ("iu", 0),
}


def save(folder, model, optimizer, epochs_done, seed, history=None):
    """Write the model after `epochs_done` epochs, then the state naming it; drop the older one.

    `history`, a History, is kept too when given (load returns it)."""
    os.makedirs(folder, exist_ok=True)
    name = f"model-{epochs_done:04d}.npz"
    model.save(os.path.join(folder, name))
    state_path = os.path.join(folder, STATE_FILE)
    previous = _previous_model(state_path)
    optimizer_state = optimizer.get_state()
    slots = {
        f"slot{i}_{k}": array
        for i, arrays in enumerate(optimizer_state["slots"])
        for k, array in enumerate(arrays)
    }
    write_npz(
        state_path,
        {
            "model": np.array(name),
            "epochs_done": np.array(epochs_done),
            "seed": np.array(seed),
            "iterations": np.array(optimizer_state["iterations"]),
            "optimizer": np.array(type(optimizer).__name__),
            **slots,
            **({} if history is None else {"history": np.array(_history_json(history))}),
        },
    )
    if previous is not None and previous != name:
        os.unlink(os.path.join(folder, previous))


def load(folder, model, optimizer):
    """Return the last checkpoint in `folder` as {"epochs_done", "seed", "weights",
    "optimizer_state", "history"}, checked against `model` and `optimizer` (neither is
    changed); "history" is {"epoch": [...], "history": {key: [...]}} or None."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Expected a checkpoint to resume from. Received: no {STATE_FILE} "
            f"in checkpoint_dir={folder!r}"
        )
    state = _read_state(path, [w.size for w in model.weights], optimizer.n_slots)
    if state["optimizer"] != type(optimizer).__name__:
        raise ValueError(
            f"Expected the checkpoint's optimizer {state['optimizer']}. "
            f"Received: optimizer={optimizer!r}"
        )
    layers, _, weights = modelfile.read(os.path.join(folder, _checked_name(path, state["model"])))
    dtypes = {layer.dtype for layer in layers if hasattr(layer, "W")}
    if [w.shape for w in weights] != [w.shape for w in model.weights] or dtypes != {model.dtype}:
        raise ValueError(
            f"Expected a model shaped like the checkpoint's {layers!r}. Received: {model!r}"
        )
    weights = [w.astype(model.dtype, copy=False) for w in weights]
    slots = [
        [state.pop(f"slot{i}_{k}").astype(model.dtype) for k in range(n)]
        for i, n in enumerate(state["slot_counts"])
    ]
    return {
        "epochs_done": state["epochs_done"],
        "seed": state["seed"],
        "weights": weights,
        "optimizer_state": {"iterations": state["iterations"], "slots": slots},
        "history": _history_from(path, state.get("history"), state["epochs_done"]),
    }


def _history_json(history):
    return json.dumps({"epoch": history.epoch, "history": history.history})


def _history_from(path, text, epochs_done):
    """The History saved at `path` as {"epoch", "history"}, checked; None if none was."""
    if text is None:
        return None
    try:
        saved = json.loads(str(text))
        epochs, logs = saved["epoch"], saved["history"]
        valid = (
            isinstance(epochs, list)
            and all(isinstance(e, int) and 0 <= e < epochs_done for e in epochs)
            and isinstance(logs, dict)
            and all(
                isinstance(values, list)
                and len(values) == len(epochs)
                and all(isinstance(v, (int, float)) for v in values)
                for values in logs.values()
            )
        )
    except (ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise ValueError(
            f"Expected the History in {path!r} as fit saves it: epochs below {epochs_done} "
            f"and one number per epoch for each key. Received: {str(text)[:80]!r}"
        )
    return {"epoch": epochs, "history": {k: [float(v) for v in vs] for k, vs in logs.items()}}


def has_checkpoint(folder):
    """True when `folder` holds a checkpoint state to resume from."""
    return os.path.isfile(os.path.join(folder, STATE_FILE))


def check_fresh(folder):
    """Raise ValueError unless `folder` is a folder (or nothing yet) holding no checkpoint
    file, state.npz or model-EEEE.npz, that a new run would replace."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(
            f"Expected checkpoint_dir to be a folder. Received: checkpoint_dir={folder!r}, a file"
        )
    found = _checkpoint_files(folder)
    if found:
        raise ValueError(
            f"Expected a checkpoint_dir holding no checkpoint, or resume=True to continue it. "
            f"Received: checkpoint_dir={folder!r} holding {', '.join(found)}"
        )


def clear(folder):
    """Remove the checkpoint files in `folder` (state.npz, model-EEEE.npz) and nothing else."""
    for name in _checkpoint_files(folder):
        os.unlink(os.path.join(folder, name))


def _checkpoint_files(folder):
    """The names of the checkpoint files in `folder`: state.npz first, then model-EEEE.npz."""
    if not os.path.isdir(folder):
        return []
    names = sorted(os.listdir(folder))
    models = [name for name in names if _MODEL_NAME.fullmatch(name)]
    return [STATE_FILE] * (STATE_FILE in names) + models


def _checked_name(path, name):
    """`name`, read from the state at `path`, if it is a model file's name and not a path."""
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"Expected {path!r} to name a model file model-EEEE.npz. Received: {name!r}"
        )
    return name


def _previous_model(state_path):
    """The model file named by the state at `state_path`, if that state is readable and the
    name is a model file's and the file exists; otherwise None (nothing is to be removed)."""
    if not os.path.isfile(state_path):
        return None
    try:
        with NpzReader(state_path) as archive:
            name = str(archive.read(["model"])["model"])
        name = _checked_name(state_path, name)
    except (ValueError, KeyError, OSError):
        return None
    folder = os.path.dirname(state_path)
    return name if os.path.isfile(os.path.join(folder, name)) else None


def _read_state(path, sizes, n_slots):
    """Return the checkpoint state at `path` as {key: value} with strings and ints unwrapped,
    the slot arrays `slot{i}_{k}` and "slot_counts" (arrays per weight); every header is checked
    against the weights' `sizes` and the optimizer's `n_slots` before any data is read."""
    try:
        with NpzReader(path) as archive:
            counts = _checked_headers(archive, sizes, n_slots)
            state = archive.read(archive.keys)
    except BadArchive as error:
        raise ValueError(
            f"Expected a readable checkpoint state at {path!r}. Received: {error}"
        ) from error
    for key, (kinds, lowest) in _SCALARS.items():
        if kinds == "U":
            state[key] = str(state[key])
            continue
        state[key] = int(state[key])
        if state[key] < lowest or key == "seed" and state[key] >= 2**63:
            raise ValueError(
                f"Expected a checkpoint state at {path!r} with {key} >= {lowest}. "
                f"Received: {key}={state[key]}"
            )
    state["slot_counts"] = counts
    return state


def _checked_headers(archive, sizes, n_slots):
    """Raise BadArchive unless the state's keys and headers are those save writes for weights
    of `sizes` and an optimizer of `n_slots`; return the number of slots of each weight."""
    missing = set(_SCALARS) - set(archive.keys)
    if missing:
        raise BadArchive(f"a state without {', '.join(sorted(missing))}")
    slots = {}
    for key in archive.keys:
        shape, dtype = archive.header(key)
        if key == "history":
            if shape != () or dtype.kind != "U":
                raise BadArchive(f"a state whose history has shape {shape} and dtype {dtype}")
            continue
        if key in _SCALARS:
            if shape != () or dtype.kind not in _SCALARS[key][0]:
                raise BadArchive(f"a state whose {key} has shape {shape} and dtype {dtype}")
            continue
        match = _SLOT_KEY.fullmatch(key)
        if match is None:
            raise BadArchive(f"a state with the unexpected key {key!r}")
        i, k = int(match[1]), int(match[2])
        if i >= len(sizes) or shape != (sizes[i],) or dtype.kind != "f":
            raise BadArchive(
                f"a state whose {key} has shape {shape} and dtype {dtype}, not that of "
                f"one of the model's {len(sizes)} weights"
            )
        slots.setdefault(i, set()).add(k)
    counts = [len(slots.get(i, ())) for i in range(len(sizes))]
    for i, ks in slots.items():
        if ks != set(range(n_slots)):
            raise BadArchive(
                f"a state with the arrays {sorted(ks)} for weight {i}, where the optimizer "
                f"keeps {n_slots}"
            )
    return counts
