"""Checkpoints in one process: fit(checkpoint_dir=..., resume=...) and fastnaive.checkpoints.

A run interrupted after some epochs and resumed reaches, bit for bit, the weights of an
uninterrupted run (the same seed, the same epoch orders, the optimizer's state restored).
The MPI side (resuming on another number of ranks) is in test_distributed.py.
"""

import os

import numpy as np
import pytest
from helpers import EXPECTED_RECEIVED, make_data, make_model

from fastnaive import SGD, Adam, checkpoints, fit

OPTIMIZERS = {
    "sgd": lambda: SGD(0.05),
    "momentum": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: Adam(0.01),
}


def train(folder, epochs, make_optimizer, resume=False, dtype="float32"):
    model, (x, y) = make_model(dtype), make_data(dtype=dtype)
    fit(
        model,
        x,
        y,
        epochs,
        16,
        optimizer=make_optimizer(),
        shuffle=True,
        seed=4,
        verbose=0,
        checkpoint_dir=folder,
        resume=resume,
    )
    return model


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, dtype, make_optimizer):
    uninterrupted = train(tmp_path / "a", 4, make_optimizer, dtype=dtype)
    train(tmp_path / "b", 2, make_optimizer, dtype=dtype)
    # A fresh model and optimizer: everything comes from the checkpoint.
    resumed = train(tmp_path / "b", 4, make_optimizer, resume=True, dtype=dtype)
    for got, expected in zip(resumed.weights, uninterrupted.weights, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_history_of_a_resumed_run_starts_at_its_first_new_epoch(tmp_path):
    model, (x, y) = make_model(), make_data()
    fit(model, x, y, 1, 16, verbose=0, checkpoint_dir=tmp_path)
    history = fit(model, x, y, 3, 16, verbose=0, checkpoint_dir=tmp_path, resume=True)
    assert history.epoch == [1, 2] and history.params["initial_epoch"] == 1


def test_the_folder_holds_the_last_model_and_the_state(tmp_path):
    train(tmp_path, 3, OPTIMIZERS["adam"])
    assert sorted(os.listdir(tmp_path)) == ["model-0003.npz", checkpoints.STATE_FILE]


def test_a_state_naming_a_file_outside_the_folder_deletes_nothing(tmp_path):
    outside = tmp_path / "keep.npz"
    outside.write_bytes(b"the user's file")
    folder = tmp_path / "run"
    model = train(folder, 1, OPTIMIZERS["sgd"])
    with np.load(folder / checkpoints.STATE_FILE) as data:
        state = dict(data)
    state["model"] = np.array("../keep.npz")
    np.savez(folder / checkpoints.STATE_FILE, **state)
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        checkpoints.load(folder, model, SGD(0.05))
    checkpoints.save(folder, model, SGD(0.05), 2, 4)
    assert outside.read_bytes() == b"the user's file"


BAD_RESUMES = {
    "no-checkpoint": (lambda folder: None, OPTIMIZERS["sgd"], FileNotFoundError),
    "other-optimizer": (
        lambda folder: train(folder, 1, OPTIMIZERS["sgd"]),
        OPTIMIZERS["adam"],
        ValueError,
    ),
    "damaged-state": (
        lambda folder: (
            train(folder, 1, OPTIMIZERS["sgd"]),
            (folder / checkpoints.STATE_FILE).write_bytes(b"PK\x03"),
        ),
        OPTIMIZERS["sgd"],
        ValueError,
    ),
}


@pytest.mark.parametrize(
    "prepare, make_optimizer, error", BAD_RESUMES.values(), ids=BAD_RESUMES.keys()
)
def test_a_bad_resume_raises_before_training(tmp_path, prepare, make_optimizer, error):
    folder = tmp_path / "run"
    folder.mkdir()
    prepare(folder)
    model, (x, y) = make_model(), make_data()
    before = model.get_weights()
    with pytest.raises(error, match=EXPECTED_RECEIVED):
        fit(
            model,
            x,
            y,
            2,
            16,
            optimizer=make_optimizer(),
            verbose=0,
            checkpoint_dir=folder,
            resume=True,
        )
    for got, expected in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_resume_needs_a_folder_and_checkpoints_a_fastnaive_optimizer(tmp_path):
    model, (x, y) = make_model(), make_data()
    with pytest.raises(ValueError, match="Expected checkpoint_dir with resume=True"):
        fit(model, x, y, 1, verbose=0, resume=True)

    class Foreign:
        def apply_gradients(self, pairs):
            pass

    with pytest.raises(TypeError, match="Expected a fastnaive optimizer with checkpoint_dir"):
        fit(model, x, y, 1, verbose=0, optimizer=Foreign(), checkpoint_dir=tmp_path)
