"""Checkpoints of a training run: the model and the optimizer's state after an epoch.

A checkpoint folder holds `model-EEEE.npz` (the model after E epochs, as save_model writes
it) and `state.npz`, which names that file and holds the epochs done, the shuffling seed,
the optimizer's class and its state (Optimizer.get_state: `iterations` and the arrays
`slot{i}_{k}`, the k-th state array of weight i). Both are written atomically, the model
first, so a crash at any point leaves a checkpoint that resumes: the previous one or the
new one. fastnaive.training writes one after every epoch when fit is given a folder, and
resumes from it on any number of processes.
"""

import os
import re

import numpy as np

from fastnaive._files import write_npz
from fastnaive.saving import load_model, save_model

__all__ = ["STATE_FILE", "save", "load"]

STATE_FILE = "state.npz"
_MODEL_NAME = re.compile(r"model-\d{4,}\.npz")


def save(folder, model, optimizer, epochs_done, seed):
    """Write the model after `epochs_done` epochs, then the state naming it; drop the older one."""
    os.makedirs(folder, exist_ok=True)
    name = f"model-{epochs_done:04d}.npz"
    save_model(model, os.path.join(folder, name))
    state_path = os.path.join(folder, STATE_FILE)
    previous = _read_state(state_path)["model"] if os.path.exists(state_path) else None
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
        },
    )
    # The name comes from a file: only a model file of this folder is ever removed.
    if previous is not None and previous != name and _MODEL_NAME.fullmatch(previous):
        os.unlink(os.path.join(folder, previous))


def load(folder, model, optimizer):
    """Return the last checkpoint in `folder` as {"epochs_done", "seed", "weights",
    "optimizer_state"}, checked against `model` and `optimizer` (neither is changed)."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Expected a checkpoint to resume from. Received: no {STATE_FILE} "
            f"in checkpoint_dir={folder!r}"
        )
    state = _read_state(path)
    if state["optimizer"] != type(optimizer).__name__:
        raise ValueError(
            f"Expected the checkpoint's optimizer {state['optimizer']}. "
            f"Received: optimizer={optimizer!r}"
        )
    if not _MODEL_NAME.fullmatch(state["model"]):
        raise ValueError(
            f"Expected {path!r} to name a model file model-EEEE.npz. Received: {state['model']!r}"
        )
    saved = load_model(os.path.join(folder, state["model"]))
    if [w.shape for w in saved.weights] != [
        w.shape for w in model.weights
    ] or saved.dtype != model.dtype:
        raise ValueError(
            f"Expected a model shaped like the checkpoint's {saved!r}. Received: {model!r}"
        )
    slots = []
    for i in range(len(model.weights)):
        keys = sorted(
            (k for k in state if k.startswith(f"slot{i}_")), key=lambda k: int(k.rsplit("_", 1)[1])
        )
        slots.append([state[k].astype(model.dtype) for k in keys])
    return {
        "epochs_done": state["epochs_done"],
        "seed": state["seed"],
        "weights": saved.weights,
        "optimizer_state": {"iterations": state["iterations"], "slots": slots},
    }


def _read_state(path):
    """Return the checkpoint state at `path` as {key: value}, strings and ints unwrapped."""
    try:
        with np.load(path, allow_pickle=False) as data:
            state = {key: data[key] for key in data.files}
        for key in ("model", "optimizer"):
            state[key] = str(state[key])
        for key in ("epochs_done", "seed", "iterations"):
            state[key] = int(state[key])
    except Exception as error:  # a damaged archive fails in many ways inside zipfile and NumPy
        raise ValueError(
            f"Expected a readable checkpoint state at {path!r}. "
            f"Received: {type(error).__name__}: {error}"
        ) from error
    return state
