"""fit(comm=...) under mpirun against single-process fit, resume, and faults.

Each test launches tests/mpi_scripts/train.py with mpirun and compares what
rank 0 wrote with fastnaive.fit run here. The tests fail (never skip) without
mpirun or mpi4py: CI installs Open MPI and the `mpi` extra.

The fault tests (docs/robustness.md, class 1) launch `fastnaive train --distributed` on two
ranks with a failure on one rank at each phase (tests/mpi_scripts/faulty_cli.py, or a bad
file or option given to one rank only): every run must end within its timeout, non-zero,
with one line naming the failure and no traceback. A regression hangs and so fails by
timeout instead of hanging CI.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastnaive
from fastnaive import checkpoints, distributed

SCRIPT = Path(__file__).parent / "mpi_scripts" / "train.py"
FAULTY_CLI = Path(__file__).parent / "mpi_scripts" / "faulty_cli.py"
TIMEOUT = 60
# A failing job must end within this many seconds (it takes 1-3 s here).
FAULT_TIMEOUT = 30
# Max abs difference of the final weights from single-process fit: summation order only.
ATOL = {"float32": 1e-5, "float64": 1e-12}


def mpirun(n_ranks, tmp_path, *args, timeout=TIMEOUT, env=None):
    """Run the script on n_ranks ranks over tmp_path's data and init; return the process."""
    launcher = shutil.which("mpirun")
    assert launcher, "Expected mpirun on PATH (apt-get install openmpi-bin). Received: none"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    command = [
        launcher,
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        str(n_ranks),
        sys.executable,
        str(SCRIPT),
        "--data",
        str(tmp_path / "data.npz"),
        "--init",
        str(tmp_path / "init.npz"),
        "--out",
        str(tmp_path / "out.npz"),
        *map(str, args),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def trained(n_ranks, tmp_path, *args):
    """Return the weights rank 0 saved after a successful run."""
    result = mpirun(n_ranks, tmp_path, *args)
    assert result.returncode == 0, result.stderr
    return fastnaive.load_model(tmp_path / "out.npz").weights


@pytest.fixture
def problem(tmp_path):
    """Write data.npz (n samples) and init.npz (a 784-64-10 model of dtype); return (x, y)."""

    def make(n_samples, dtype):
        rng = np.random.default_rng(0)
        x = rng.random((n_samples, 784), dtype=np.float32)
        y = rng.integers(0, 10, n_samples)
        np.savez(tmp_path / "data.npz", x=x, y=y)
        model = fastnaive.NaiveSequential(
            [
                fastnaive.NaiveDense(
                    784, 64, "relu", dtype=dtype, seed=1, initializer="glorot_uniform"
                ),
                fastnaive.NaiveDense(
                    64, 10, "softmax", dtype=dtype, seed=2, initializer="glorot_uniform"
                ),
            ]
        )
        model.save(tmp_path / "init.npz")
        return x, y

    return make


def reference(tmp_path, x, y, epochs, optimizer, shuffle, seed):
    """Return the weights of single-process fit from init.npz with the same settings."""
    model = fastnaive.load_model(tmp_path / "init.npz")
    fastnaive.fit(
        model,
        x,
        y,
        epochs,
        128,
        optimizer=fastnaive.optimizers.get(optimizer),
        shuffle=shuffle,
        seed=seed,
        verbose=0,
    )
    return model.weights


def assert_close(weights, expected, dtype):
    for i, (w, e) in enumerate(zip(weights, expected)):
        np.testing.assert_allclose(w, e, rtol=0, atol=ATOL[dtype], err_msg=f"weights[{i}]")


@pytest.mark.parametrize(
    "n_ranks, n_samples, dtype, optimizer, shuffle",
    [
        (2, 1000, "float32", "sgd", False),
        # 897 = 7 * 128 + 1: shares of 42/43/43, and a last batch of 1 leaving two ranks empty.
        (3, 897, "float32", "adam", True),
        (3, 897, "float64", "momentum", True),
        (3, 1000, "float64", "sgd", False),
    ],
    ids=[
        "2-ranks-sgd-f32",
        "3-ranks-uneven-adam-shuffle-f32",
        "3-ranks-uneven-momentum-f64",
        "3-ranks-sgd-f64",
    ],
)
def test_matches_single_process_fit(
    problem, tmp_path, n_ranks, n_samples, dtype, optimizer, shuffle
):
    x, y = problem(n_samples, dtype)
    weights = trained(
        n_ranks,
        tmp_path,
        "--epochs",
        2,
        "--optimizer",
        optimizer,
        *(["--shuffle"] if shuffle else []),
        "--seed",
        7,
    )
    assert_close(weights, reference(tmp_path, x, y, 2, optimizer, shuffle, 7), dtype)


@pytest.mark.parametrize("dtype, optimizer", [("float32", "adam"), ("float64", "momentum")])
def test_overlapped_reductions_give_the_bits_of_reductions_after_the_backward_pass(
    problem, tmp_path, dtype, optimizer
):
    """FASTNAIVE_OVERLAP=1 reduces each layer's gradients as the backward pass produces them;
    the sums are added in rank order either way, so 3 ranks reach the same bits, including
    the last batch of 1 sample that leaves two ranks with nothing to compute."""
    x, y = problem(897, dtype)
    runs = {}
    for overlap in ("0", "1"):
        args = ["--epochs", 2, "--optimizer", optimizer, "--shuffle", "--seed", 7]
        result = mpirun(3, tmp_path, *args, env={"FASTNAIVE_OVERLAP": overlap})
        assert result.returncode == 0, result.stderr
        runs[overlap] = fastnaive.load_model(tmp_path / "out.npz").weights
        # fit closes its group: the reducer's helper thread is gone with it.
        left = json.loads((tmp_path / "out.json").read_text())["threads_after_fit"]
        assert left == ["MainThread"]
    for after, overlapped in zip(runs["0"], runs["1"], strict=True):
        assert np.array_equal(after.view(np.uint8), overlapped.view(np.uint8))
    assert_close(runs["1"], reference(tmp_path, x, y, 2, optimizer, True, 7), dtype)


def test_validation_gives_the_history_of_single_process_fit(problem, tmp_path):
    """The same loop runs both: the same History keys, params and (to rounding) values."""
    x, y = problem(1000, "float32")
    trained(
        3,
        tmp_path,
        "--epochs",
        2,
        "--optimizer",
        "adam",
        "--shuffle",
        "--seed",
        5,
        "--validation-split",
        0.2,
    )
    with open(tmp_path / "out.json") as f:
        ranks = json.load(f)
    model = fastnaive.load_model(tmp_path / "init.npz")
    single = fastnaive.fit(
        model, x, y, 2, 128, optimizer="adam", shuffle=True, seed=5, validation_split=0.2, verbose=0
    )
    assert (
        list(ranks["history"])
        == list(single.history)
        == ["loss", "accuracy", "val_loss", "val_accuracy"]
    )
    assert ranks["params"] == {**single.params, "ranks": 3}
    for key, values in single.history.items():
        np.testing.assert_allclose(ranks["history"][key], values, rtol=1e-5, err_msg=key)


def test_dropout_on_ranks_matches_one_process(tmp_path):
    """Rank 0's dropout seeds reach every rank, and masks follow the sample's row in the
    global batch: 3 ranks draw the masks of one process."""
    rng = np.random.default_rng(0)
    x, y = rng.random((500, 784), dtype=np.float32), rng.integers(0, 10, 500)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(784, 64, "relu", seed=1, initializer="glorot_uniform"),
            fastnaive.Dropout(0.3, seed=11),
            fastnaive.NaiveDense(64, 10, "softmax", seed=2, initializer="glorot_uniform"),
        ]
    ).save(tmp_path / "init.npz")
    weights = trained(3, tmp_path, "--epochs", 2, "--optimizer", "adam", "--shuffle", "--seed", 4)
    assert_close(weights, reference(tmp_path, x, y, 2, "adam", True, 4), "float32")


def test_resume_on_more_ranks_matches_uninterrupted_run(problem, tmp_path):
    x, y = problem(897, "float32")
    folder = tmp_path / "checkpoints"
    common = ["--optimizer", "adam", "--shuffle", "--seed", 3, "--checkpoint-dir", folder]
    trained(2, tmp_path, "--epochs", 2, *common)
    assert sorted(os.listdir(folder)) == ["model-0002.npz", checkpoints.STATE_FILE]
    weights = trained(3, tmp_path, "--epochs", 4, "--resume", *common)
    assert_close(weights, reference(tmp_path, x, y, 4, "adam", True, 3), "float32")


def test_a_rank_that_raises_aborts_the_job_with_its_message(problem, tmp_path):
    problem(1000, "float32")
    result = mpirun(2, tmp_path, "--fail", "raise", timeout=20)
    assert result.returncode != 0
    assert "error on rank 1 of 2: RuntimeError: injected failure" in result.stderr


def test_a_killed_rank_ends_the_job(problem, tmp_path):
    problem(1000, "float32")
    result = mpirun(2, tmp_path, "--fail", "kill", timeout=20)
    assert result.returncode != 0


def test_a_rank_that_hangs_ends_the_job_after_the_step_deadline(problem, tmp_path):
    """Rank 1 stops in a callback; rank 0 gives up waiting for its gradients after
    FASTNAIVE_STEP_TIMEOUT seconds and prints the job's one line, naming rank 1."""
    problem(1000, "float32")
    start = time.monotonic()
    result = mpirun(
        2, tmp_path, "--fail", "hang", timeout=FAULT_TIMEOUT, env={"FASTNAIVE_STEP_TIMEOUT": "2"}
    )
    assert 2 < time.monotonic() - start < FAULT_TIMEOUT
    assert_one_error_line(
        result, "error on rank 0 of 2: TimeoutError: no gradients from rank 1 ", "in 2 s"
    )


class _Request:
    def __init__(self, done):
        self.done = done

    def Test(self):  # noqa: N802 (mpi4py's name)
        return self.done


@pytest.mark.parametrize(
    "stage, named",
    [
        ("gather", "rank 2"),  # rank 2's copy of my part has not come
        ("owners", "rank 1"),  # rank 1 has not taken my copy of its part
        ("spread-in", "rank 1"),  # rank 1's sum of its part has not come
        ("spread-out", "rank 1, 2"),  # ranks 1 and 2 have not taken my sum
        ("done", "the other ranks"),  # finished since the last poll
    ],
)
def test_a_late_step_names_the_ranks_its_sums_wait_for(stage, named):
    """Rank 0 of 3 waits at each stage of a rank-ordered sum: the deadline's message names
    the ranks it waits for there, or "the other ranks" if none is left."""
    total = object.__new__(distributed._RankOrderedSum)
    total.peers = total.owners = [1, 2]
    total.summed = stage not in ("gather",)
    total.receiving = stage not in ("gather", "owners")
    total.gather_in = [_Request(True), _Request(stage != "gather")]
    total.gather_out = [_Request(stage != "owners"), _Request(True)]
    total.spread_in = [_Request(stage != "spread-in"), _Request(True)]
    total.spread_out = [_Request(stage != "spread-out")] * 2
    reducer = object.__new__(distributed._Reducer)
    reducer.active, reducer.steps = [total], 36
    assert reducer._missing() == f"no gradients from {named} for training step 36"


@pytest.mark.parametrize(
    "variable, values, message",
    [
        (
            "FASTNAIVE_STEP_TIMEOUT",
            ("soon", "soon"),
            "Expected FASTNAIVE_STEP_TIMEOUT to be a number of seconds >= 0 (0: no deadline). "
            "Received: FASTNAIVE_STEP_TIMEOUT='soon'",
        ),
        (
            "FASTNAIVE_STEP_TIMEOUT",
            ("30", "nan"),
            "Expected valid arguments on every rank. Received: on rank 1, ValueError: "
            "Expected FASTNAIVE_STEP_TIMEOUT to be a number of seconds >= 0",
        ),
        (
            "FASTNAIVE_STEP_TIMEOUT",
            ("30", "45"),
            "Expected the same step_timeout on every rank. Received: step_timeout=45.0 on "
            "rank 1, step_timeout=30.0 on rank 0",
        ),
        (
            "FASTNAIVE_OVERLAP",
            ("1", "yes"),
            "Expected valid arguments on every rank. Received: on rank 1, ValueError: "
            "Expected FASTNAIVE_OVERLAP to be 1",
        ),
        (
            "FASTNAIVE_OVERLAP",
            ("1", "0"),
            "Expected the same overlap on every rank. Received: overlap=False on rank 1",
        ),
    ],
    ids=["bad-timeout", "bad-timeout-on-one-rank", "other-timeouts", "bad-overlap", "mixed"],
)
def test_the_reducer_settings_are_checked_and_agreed_before_training(
    problem, tmp_path, variable, values, message
):
    """Read from the environment on every rank: a bad or differing value raises the same
    error on every rank, before any training."""
    problem(1000, "float32")
    command = [sys.executable, SCRIPT, "--data", tmp_path / "data.npz"]
    command += ["--init", tmp_path / "init.npz", "--out", tmp_path / "out.npz"]
    result = mpirun_each(*(["env", f"{variable}={value}", *command] for value in values))
    assert result.returncode != 0
    assert result.stderr.count(message) == 2, result.stderr
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize(
    "mismatch, message",
    [
        (
            "batch-size",
            "Expected the same batch_size on every rank. Received: batch_size=64 on rank 1",
        ),
        (
            "labels",
            "Expected valid arguments on every rank. Received: on rank 1, ValueError: "
            "Expected labels in [0, 10)",
        ),
    ],
)
def test_bad_or_mismatched_arguments_fail_on_every_rank_before_training(
    problem, tmp_path, mismatch, message
):
    problem(1000, "float32")
    result = mpirun(2, tmp_path, "--mismatch", mismatch, timeout=20)
    assert result.returncode != 0
    assert result.stderr.count(message) == 2, result.stderr
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize(
    "size, batch",
    [(3, (0, 128)), (3, (896, 897)), (4, (10, 13))],
    ids=["full-batch", "one-sample", "fewer-samples-than-ranks"],
)
def test_shares_cover_the_batch_in_order(size, batch):
    bounds = [distributed.share(*batch, rank, size) for rank in range(size)]
    assert bounds[0][0] == batch[0] and bounds[-1][1] == batch[1]
    assert all(hi == lo for (_, hi), (lo, _) in zip(bounds, bounds[1:]))
    assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_importing_fastnaive_does_not_import_mpi4py():
    code = "import sys, fastnaive, fastnaive.distributed; sys.exit('mpi4py' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.mnist
def test_the_books_model_on_mnist_matches_one_process(tmp_path):
    """`mpirun -n 2 fastnaive train --distributed` against `fastnaive train`, same settings."""
    launcher = shutil.which("mpirun")
    assert launcher, "Expected mpirun on PATH (apt-get install openmpi-bin). Received: none"
    settings = [
        "-m",
        "fastnaive",
        "train",
        "--epochs",
        "1",
        "--seed",
        "0",
        "--threads",
        "1",
        "--verbose",
        "0",
    ]
    runs = {
        "ranks": [
            launcher,
            "--allow-run-as-root",
            "--oversubscribe",
            "-n",
            "2",
            sys.executable,
            *settings,
            "--distributed",
        ],
        "single": [sys.executable, *settings],
    }
    accuracies, models = {}, {}
    for name, command in runs.items():
        result = subprocess.run(
            [*command, "--save", str(tmp_path / f"{name}.npz")],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        accuracies[name] = float(result.stdout.split("test accuracy: ")[1].split()[0])
        models[name] = fastnaive.load_model(tmp_path / f"{name}.npz")
    # Float32 summation order only: measured 2.8e-7 after 2 epochs; at most one test image
    # may fall the other way.
    assert abs(accuracies["ranks"] - accuracies["single"]) <= 1e-4
    for ranks, single in zip(models["ranks"].weights, models["single"].weights, strict=True):
        np.testing.assert_allclose(ranks, single, rtol=0, atol=ATOL["float32"])


# A failure on one rank, at any phase, ends the whole job (class 1)

CLI = [sys.executable, "-m", "fastnaive"]
QUICK_TRAIN = ["train", "--distributed", "--threads", "1", "--epochs", "2", "--hidden", "8"]


@pytest.fixture
def mnist_file(tmp_path):
    """A small MNIST-layout .npz (300 training, 100 test images)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 300).astype(np.uint8),
        x_test=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 100).astype(np.uint8),
    )
    return str(path)


def mpirun_each(*commands, timeout=FAULT_TIMEOUT):
    """Run one command per rank (MPMD: `mpirun -n 1 A : -n 1 B`); return the process."""
    launcher = shutil.which("mpirun")
    assert launcher, "Expected mpirun on PATH (apt-get install openmpi-bin). Received: none"
    line = [launcher, "--allow-run-as-root", "--oversubscribe"]
    for i, command in enumerate(commands):
        line += [":"] * (i > 0) + ["-n", "1", *map(str, command)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(line, capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_error_line(result, *named):
    """The job failed with exactly one `fastnaive: ...` line on stderr, naming `named`."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("fastnaive:")]
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert all(text in lines[0] for text in named), lines[0]
    assert "Traceback" not in result.stderr, result.stderr


FAULTS = {
    # phase: (the rank that fails, the error it raises, extra options)
    "arguments": (1, "ValueError", []),
    "data": (1, "OSError", []),
    "model": (1, "MemoryError", []),
    "fit-arguments": (1, "MemoryError", []),
    "resume": (0, "BadZipFile", ["--resume"]),
    "training": (1, "KeyboardInterrupt", []),
    "validation": (1, "RuntimeError", ["--validation-split", "0.2"]),
    "checkpoint": (0, "OSError", []),
    "evaluation": (0, "KeyError", []),
    "saving": (0, "MemoryError", ["--save", "{tmp}/model.npz"]),
}


@pytest.mark.parametrize("phase", FAULTS)
def test_a_failure_on_one_rank_at_any_phase_ends_the_job(tmp_path, mnist_file, phase):
    rank, error, extra = FAULTS[phase]
    folder = tmp_path / "checkpoints"
    if phase == "resume":  # a checkpoint to resume from
        assert (
            subprocess.run(
                [*CLI, "train", "--epochs", "1", "--hidden", "8", "--verbose", "0"]
                + ["--data", mnist_file, "--checkpoint-dir", folder],
                timeout=TIMEOUT,
            ).returncode
            == 0
        )
    command = [sys.executable, FAULTY_CLI, phase, rank, error, "--", *QUICK_TRAIN]
    command += ["--verbose", "0", "--data", mnist_file, "--checkpoint-dir", folder]
    command += [arg.format(tmp=tmp_path) for arg in extra]
    result = mpirun_each(command, command)
    assert_one_error_line(result, f"injected {phase} failure")


def test_resume_from_a_truncated_state_ends_every_rank(tmp_path, mnist_file):
    """The issue's example: rank 0 cannot read state.npz; rank 1 must not wait for it."""
    folder = tmp_path / "checkpoints"
    command = [*CLI, *QUICK_TRAIN, "--verbose", "0", "--data", mnist_file, "--checkpoint-dir"]
    first = mpirun_each([*command, folder], [*command, folder])
    assert first.returncode == 0, first.stderr
    state = folder / checkpoints.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    result = mpirun_each([*command, folder, "--resume"], [*command, folder, "--resume"])
    assert_one_error_line(result, "Expected a readable checkpoint state", str(state))


def test_data_missing_on_one_rank_ends_every_rank(tmp_path, mnist_file):
    command = [*CLI, *QUICK_TRAIN, "--verbose", "0", "--data"]
    result = mpirun_each([*command, mnist_file], [*command, tmp_path / "missing.npz"])
    assert_one_error_line(result, "on rank 1", "missing.npz")


def test_a_bad_option_on_one_rank_ends_every_rank(mnist_file):
    command = [*CLI, *QUICK_TRAIN, "--verbose", "0", "--data", mnist_file]
    result = mpirun_each(command, [*command, "--threads", "0"])
    assert_one_error_line(result, "on rank 1", "--threads")


def test_a_checkpoint_write_failing_mid_training_ends_every_rank(tmp_path, mnist_file):
    """Rank 0 cannot write the second epoch's checkpoint: a folder is in the way of its file.
    (A --checkpoint-dir that cannot be written at all is refused before training.)"""
    folder = tmp_path / "checkpoints"
    command = [*CLI, *QUICK_TRAIN, "--verbose", "0", "--data", mnist_file]
    command += ["--checkpoint-dir", folder]
    first = mpirun_each([*command, "--epochs", "1"], [*command, "--epochs", "1"])
    assert first.returncode == 0, first.stderr
    (folder / "model-0002.npz").mkdir()
    result = mpirun_each([*command, "--resume"], [*command, "--resume"])
    assert_one_error_line(result, "error on rank 0 of 2", "IsADirectoryError")


def test_a_save_that_cannot_be_written_is_refused_on_every_rank_before_training(
    tmp_path, mnist_file
):
    (tmp_path / "model.npz").mkdir()
    command = [*CLI, *QUICK_TRAIN, "--verbose", "2", "--data", mnist_file]
    command += ["--save", tmp_path / "model.npz"]
    result = mpirun_each(command, command)
    assert_one_error_line(result, "--save", "is a folder, not a file")
    assert "Epoch 1/2" not in result.stdout


def test_a_folder_holding_a_checkpoint_is_refused_on_every_rank(tmp_path, mnist_file):
    folder = tmp_path / "checkpoints"
    command = [*CLI, *QUICK_TRAIN, "--verbose", "0", "--data", mnist_file]
    command += ["--checkpoint-dir", folder]
    assert mpirun_each(command, command).returncode == 0
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    result = mpirun_each(command, command)
    assert_one_error_line(result, "holding state.npz", "--overwrite")
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    result = mpirun_each([*command, "--overwrite"], [*command, "--overwrite"])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "fail, message",
    [
        ("set-model", "error on rank 1 of 2: RuntimeError: injected failure in set_model"),
        ("interrupt", "error on rank 1 of 2: KeyboardInterrupt: injected interrupt"),
    ],
)
def test_an_exception_fit_does_not_catch_still_ends_the_job(problem, tmp_path, fail, message):
    """A script's uncaught exception on one rank aborts every rank (distributed.world)."""
    problem(1000, "float32")
    result = mpirun(2, tmp_path, "--fail", fail, timeout=FAULT_TIMEOUT)
    assert result.returncode != 0
    assert message in result.stderr
