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


# Never delete or overwrite what the user did not ask to (class 2)


def tree(folder):
    """{relative path: bytes} of every file under `folder`."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_run_without_resume_refuses_a_folder_holding_a_checkpoint(tmp_path):
    folder = tmp_path / "run"
    train(folder, 2, OPTIMIZERS["adam"])
    before = tree(folder)
    model, (x, y) = make_model(), make_data()
    weights = model.get_weights()
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + ".*holding state.npz"):
        fit(model, x, y, 1, 16, verbose=0, checkpoint_dir=folder)
    assert tree(folder) == before
    for got, expected in zip(model.weights, weights, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_a_file_as_checkpoint_dir_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("the user's notes")
    model, (x, y) = make_model(), make_data()
    with pytest.raises(ValueError, match=r"Expected checkpoint_dir to be a folder"):
        fit(model, x, y, 1, 16, verbose=0, checkpoint_dir=path)
    assert path.read_text() == "the user's notes"


def test_a_folder_with_other_files_but_no_checkpoint_is_used_and_they_are_kept(tmp_path):
    folder = tmp_path / "run"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("the user's notes")
    (folder / "sub" / "model-0001.npz").write_bytes(b"the user's")
    train(folder, 2, OPTIMIZERS["sgd"])
    assert sorted(os.listdir(folder)) == [
        "model-0002.npz",
        "notes.txt",
        checkpoints.STATE_FILE,
        "sub",
    ]
    assert (folder / "sub" / "model-0001.npz").read_bytes() == b"the user's"


def test_a_model_file_left_without_a_state_is_refused_not_replaced(tmp_path):
    """model-0001.npz alone (a run killed before its first state, or the user's own file):
    a new run would write over it, so it is refused."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model-0001.npz").write_bytes(b"not named by any state")
    model, (x, y) = make_model(), make_data()
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + ".*holding model-0001.npz"):
        fit(model, x, y, 1, 16, verbose=0, checkpoint_dir=folder)
    assert (folder / "model-0001.npz").read_bytes() == b"not named by any state"


def with_state_naming(folder, name):
    """Rewrite the folder's state file so that it names `name` as its model."""
    with np.load(folder / checkpoints.STATE_FILE) as data:
        state = dict(data)
    state["model"] = np.array(name)
    np.savez(folder / checkpoints.STATE_FILE, **state)


HOSTILE_NAMES = {
    "parent": "../keep.npz",
    "absolute": "{tmp}/keep.npz",
    "through-model": "model-0001.npz/../../keep.npz",
    "subfolder": "sub/model-0001.npz",
    "empty": "",
    "dot": ".",
}


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_a_name_read_from_the_state_is_never_used_as_a_path(tmp_path, name):
    outside = tmp_path / "keep.npz"
    outside.write_bytes(b"the user's file")
    folder = tmp_path / "run"
    model = train(folder, 1, OPTIMIZERS["sgd"])
    (folder / "sub").mkdir()
    (folder / "sub" / "model-0001.npz").write_bytes(b"the user's other file")
    with_state_naming(folder, name.format(tmp=tmp_path))
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        checkpoints.load(folder, model, SGD(0.05))
    checkpoints.save(folder, model, SGD(0.05), 2, 4)
    checkpoints.clear(folder)
    assert outside.read_bytes() == b"the user's file"
    assert (folder / "sub" / "model-0001.npz").read_bytes() == b"the user's other file"


def test_a_model_file_that_is_a_symlink_removes_only_the_link(tmp_path):
    outside = tmp_path / "keep.npz"
    outside.write_bytes(b"the user's file")
    folder = tmp_path / "run"
    model = train(folder, 1, OPTIMIZERS["sgd"])
    os.replace(folder / "model-0001.npz", tmp_path / "moved.npz")
    os.symlink(outside, folder / "model-0001.npz")
    checkpoints.save(folder, model, SGD(0.05), 2, 4)
    assert outside.read_bytes() == b"the user's file"
    assert sorted(os.listdir(folder)) == ["model-0002.npz", checkpoints.STATE_FILE]


def test_a_damaged_previous_state_removes_nothing(tmp_path):
    folder = tmp_path / "run"
    model = train(folder, 1, OPTIMIZERS["sgd"])
    (folder / checkpoints.STATE_FILE).write_bytes(b"PK\x03\x04 damaged")
    checkpoints.save(folder, model, SGD(0.05), 2, 4)
    assert sorted(os.listdir(folder)) == [
        "model-0001.npz",
        "model-0002.npz",
        checkpoints.STATE_FILE,
    ]


def test_clear_removes_the_checkpoint_files_and_nothing_else(tmp_path):
    folder = tmp_path / "run"
    train(folder, 2, OPTIMIZERS["momentum"])
    (folder / "model-0001.npz").write_bytes(b"left by a killed run")
    (folder / "notes.txt").write_text("the user's notes")
    (folder / "model-1.npz").write_text("not a checkpoint's name")
    checkpoints.clear(folder)
    assert sorted(os.listdir(folder)) == ["model-1.npz", "notes.txt"]
    checkpoints.check_fresh(folder)


# Hostile state files (class 7): refused from their headers, before any data is read


def state_with(folder, **changes):
    """Rewrite the folder's state file with `changes` (None deletes a key)."""
    with np.load(folder / checkpoints.STATE_FILE) as data:
        state = {**dict(data), **changes}
    np.savez(
        folder / checkpoints.STATE_FILE,
        **{key: value for key, value in state.items() if value is not None},
    )


HOSTILE_STATES = {
    "slot-of-another-size": {"slot0_0": np.zeros(3, np.float32)},
    "slot-of-a-missing-weight": {"slot9_0": np.zeros(3, np.float32)},
    "slot-beyond-the-optimizer's": {"slot0_5": np.zeros(784 * 16, np.float32)},
    "slot-of-integers": {"slot0_0": np.zeros(784 * 16, np.int32)},
    "slot-of-objects": {"slot0_0": np.array([{}], dtype=object)},
    "unknown-key": {"payload": np.zeros(3)},
    "epochs-negative": {"epochs_done": np.array(-1)},
    "epochs-a-vector": {"epochs_done": np.array([1, 2])},
    "seed-negative": {"seed": np.array(-5)},
    "model-missing": {"model": None},
    "model-a-number": {"model": np.array(3)},
}


@pytest.mark.parametrize("changes", HOSTILE_STATES.values(), ids=HOSTILE_STATES.keys())
def test_a_hostile_state_file_is_refused(tmp_path, changes):
    folder = tmp_path / "run"
    train(folder, 1, OPTIMIZERS["momentum"])
    state_with(folder, **changes)
    model, (x, y) = make_model(), make_data()
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        fit(
            model,
            x,
            y,
            2,
            16,
            optimizer=OPTIMIZERS["momentum"](),
            verbose=0,
            checkpoint_dir=folder,
            resume=True,
        )


def test_overwrite_replaces_a_checkpoint_that_resume_would_continue(tmp_path):
    train(tmp_path, 3, OPTIMIZERS["adam"])
    model, (x, y) = make_model(), make_data()
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        fit(model, x, y, 1, 16, verbose=0, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="Expected resume or overwrite, not both"):
        fit(model, x, y, 1, 16, verbose=0, checkpoint_dir=tmp_path, resume=True, overwrite=True)
    history = fit(model, x, y, 1, 16, verbose=0, checkpoint_dir=tmp_path, overwrite=True)
    assert history.epoch == [0]
    assert sorted(os.listdir(tmp_path)) == ["model-0001.npz", checkpoints.STATE_FILE]
