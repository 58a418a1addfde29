"""The command line, in process through fastnaive.cli.main and as `python -m fastnaive`.

Every run reads a small synthetic MNIST-layout .npz: each class lights its own
7x7 square of the 28x28 image, over noise, so two epochs learn it.
"""

import contextlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastnaive
from fastnaive import cli
from fastnaive.cli import main

N_TRAIN, N_TEST = 600, 200
TRAIN = [
    "train",
    "--epochs",
    "2",
    "--hidden",
    "32,16",
    "--optimizer",
    "adam",
    "--lr",
    "0.01",
    "--init",
    "glorot_uniform",
    "--shuffle",
    "--seed",
    "0",
    "--validation-split",
    "0.2",
    "--verbose",
    "2",
]
ACCURACY = re.compile(r"test accuracy: (\d\.\d{4})$", re.MULTILINE)


def synthetic_mnist(n, rng):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 64, (n, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 4)
        image[7 * row : 7 * row + 7, 7 * col : 7 * col + 7] = 255
    return images, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The path, as a str, of the synthetic mnist.npz, alone in its folder."""
    rng = np.random.default_rng(0)
    x_train, y_train = synthetic_mnist(N_TRAIN, rng)
    x_test, y_test = synthetic_mnist(N_TEST, rng)
    path = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def run(argv):
    """Run main(argv) in process; return (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def run_module(*args):
    """Run `python -m fastnaive args` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "fastnaive", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """The folder and the stdout of one `train ... --save --history --plot` run."""
    folder = tmp_path_factory.mktemp("trained")
    status, out, err = run(
        [
            *TRAIN,
            "--data",
            data,
            "--save",
            str(folder / "m.npz"),
            "--history",
            str(folder / "h.json"),
            "--plot",
            str(folder / "p.png"),
        ]
    )
    assert (status, err) == (0, "")
    return folder, out


def test_train_reports_epochs_and_test_accuracy(trained):
    _, out = trained
    lines = out.splitlines()
    assert [line.split(" - ")[0] for line in lines[:2]] == ["Epoch 1/2", "Epoch 2/2"]
    assert all("val_loss:" in line for line in lines[:2])
    assert float(ACCURACY.search(out).group(1)) > 0.5  # chance is 0.1


def test_train_writes_a_loadable_model(trained):
    folder, _ = trained
    model = fastnaive.load_model(folder / "m.npz")
    assert [(layer.input_size, layer.output_size, layer.activation) for layer in model.layers] == [
        (784, 32, "relu"),
        (32, 16, "relu"),
        (16, 10, "softmax"),
    ]


def test_train_writes_the_history_as_json(trained):
    folder, _ = trained
    history = json.loads((folder / "h.json").read_text())
    assert list(history) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["epoch"] == [0, 1] and all(len(values) == 2 for values in history.values())


def test_train_writes_a_png_plot(trained):
    folder, _ = trained
    assert (folder / "p.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_evaluate_prints_the_accuracy_train_printed(trained, data):
    folder, out = trained
    status, evaluated, err = run(["evaluate", str(folder / "m.npz"), "--data", data])
    assert (status, err) == (0, "")
    assert ACCURACY.search(evaluated).group(1) == ACCURACY.search(out).group(1)
    assert evaluated.startswith("test loss: ")


def test_history_as_csv_with_one_thread(tmp_path, data):
    status, _, _ = run(
        [
            "train",
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--threads",
            "1",
            "--verbose",
            "0",
            "--data",
            data,
            "--history",
            str(tmp_path / "h.csv"),
        ]
    )
    assert status == 0
    header, *rows = (tmp_path / "h.csv").read_text().splitlines()
    assert header == "epoch,loss,accuracy"
    assert [row.split(",")[0] for row in rows] == ["0", "1"]
    assert all(np.isfinite(float(value)) for row in rows for value in row.split(",")[1:])


def test_info_prints_version_blas_and_data_places(monkeypatch, data):
    folder = data.rsplit("/", 1)[0]
    monkeypatch.setenv("FASTNAIVE_DATA", folder)
    status, out, _ = run(["info"])
    assert status == 0
    assert out.startswith(f"fastnaive {fastnaive.__version__}, numpy {np.__version__}\n")
    assert re.search(r"^blas: \w+", out, re.MULTILINE)
    assert f"mnist:\n  FASTNAIVE_DATA={folder}: found\n" in out
    assert "\nfashion_mnist:\n" in out


QUICK = ["--epochs", "1", "--hidden", "8", "--verbose", "0", "--data", "{data}"]


def declared_dependencies():
    """The names of the installed fastnaive's requirements, leaving out its extras."""
    return {
        re.match(r"[\w.-]+", requirement).group().lower()
        for requirement in importlib.metadata.requires("fastnaive") or []
        if "extra ==" not in requirement
    }


@pytest.mark.parametrize(
    "argv", [["info"], ["train", *QUICK, "--threads", "1"]], ids=["info", "threads"]
)
def test_runs_with_the_declared_dependencies_only(monkeypatch, data, argv):
    if "threadpoolctl" not in declared_dependencies():
        monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # `import threadpoolctl` fails
    assert run([arg.format(data=data) for arg in argv])[0] == 0


# Command lines with a wrong value ({tmp}/garbage.npz holds text), each with what its error names.
BAD_VALUES = {
    "epochs-negative": (["train", *QUICK, "--epochs", "-1"], "epochs"),
    "batch-size-0": (["train", *QUICK, "--batch-size", "0"], "batch_size"),
    "lr-negative": (["train", *QUICK, "--lr", "-0.1"], "learning_rate"),
    "validation-split-1.5": (["train", *QUICK, "--validation-split", "1.5"], "validation_split"),
    "threads-0": (["train", *QUICK, "--threads", "0"], "--threads"),
    "history-txt": (["train", *QUICK, "--history", "x.txt"], "--history"),
    "resume-without-folder": (["train", *QUICK, "--resume"], "--checkpoint-dir"),
    "data-missing": (["train", *QUICK, "--data", "/nonexistent"], "/nonexistent"),
    "overwrite-without-folder": (["train", *QUICK, "--overwrite"], "--checkpoint-dir"),
    "overwrite-and-resume": (
        ["train", *QUICK, "--checkpoint-dir", "{tmp}/run", "--resume", "--overwrite"],
        "--overwrite",
    ),
    "seed-negative": (["train", *QUICK, "--seed", "-1"], "--seed"),
    "save-in-missing-folder": (["train", *QUICK, "--save", "{tmp}/missing/m.npz"], "--save"),
    "checkpoint-dir-a-file": (["train", *QUICK, "--checkpoint-dir", "{tmp}/garbage.npz"], "folder"),
    "model-unreadable": (["evaluate", "{tmp}/garbage.npz", "--data", "{data}"], "garbage.npz"),
    "model-missing": (["evaluate", "{tmp}/missing.npz", "--data", "{data}"], "missing.npz"),
}


@pytest.mark.parametrize("argv, named", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_value_is_one_error_line_and_status_1(tmp_path, data, argv, named):
    (tmp_path / "garbage.npz").write_text("not a model\n")
    status, _, err = run([arg.format(data=data, tmp=tmp_path) for arg in argv])
    assert status == 1
    assert err.startswith("fastnaive: error: ") and err.count("\n") == 1 and named in err


USAGE_ERRORS = {
    "unknown-option": ["train", "--bogus"],
    "unknown-optimizer": ["train", "--optimizer", "rmsprop"],
    "hidden-0": ["train", "--hidden", "0"],
    "epochs-word": ["train", "--epochs", "two"],
    "unknown-command": ["frobnicate"],
}


@pytest.mark.parametrize("argv", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_error_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: fastnaive" in capsys.readouterr().err


def test_checkpoints_resume_to_the_weights_of_an_uninterrupted_run(tmp_path, data):
    settings = [*QUICK[2:], "--optimizer", "momentum", "--shuffle", "--seed", "1"]
    settings = [arg.format(data=data) for arg in settings]
    run(["train", *settings, "--epochs", "3", "--save", str(tmp_path / "whole.npz")])
    folder = str(tmp_path / "run")
    assert run(["train", *settings, "--epochs", "1", "--checkpoint-dir", folder])[0] == 0
    status, out, err = run(
        [
            "train",
            *settings,
            "--epochs",
            "3",
            "--checkpoint-dir",
            folder,
            "--resume",
            "--save",
            str(tmp_path / "resumed.npz"),
        ]
    )
    assert (status, err) == (0, "") and "trained 2 epochs" in out
    whole, resumed = (
        fastnaive.load_model(tmp_path / f"{name}.npz") for name in ("whole", "resumed")
    )
    for got, expected in zip(resumed.weights, whole.weights, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_python_m_fastnaive_without_command_trains(data):
    result = run_module("--epochs", "1", "--hidden", "8", "--data", data)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("Epoch 1/1 - ") and ACCURACY.search(result.stdout)


def test_python_m_fastnaive_error_has_no_traceback(tmp_path, data):
    result = run_module("train", "--epochs", "1", "--data", str(tmp_path / "missing.npz"))
    assert result.returncode == 1
    assert result.stderr.startswith("fastnaive: error: ") and result.stderr.count("\n") == 1


def test_python_m_fastnaive_usage_error_exits_2():
    result = run_module("train", "--bogus")
    assert result.returncode == 2 and "unrecognized arguments: --bogus" in result.stderr


def test_a_folder_holding_a_checkpoint_needs_resume_or_overwrite(tmp_path, data):
    folder = tmp_path / "run"
    train = ["train", *[arg.format(data=data) for arg in QUICK], "--checkpoint-dir", str(folder)]
    assert run(train)[0] == 0
    (folder / "notes.txt").write_text("the user's notes")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    status, _, err = run(train)
    assert status == 1 and err.count("\n") == 1
    assert "holding state.npz" in err and "--resume" in err and "--overwrite" in err
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert run([*train, "--overwrite", "--seed", "3"])[0] == 0
    assert sorted(os.listdir(folder)) == ["model-0001.npz", "notes.txt", "state.npz"]
    assert (folder / "model-0001.npz").read_bytes() != before["model-0001.npz"]


FAILURES = {
    "memory": (MemoryError(), 1, "fastnaive: error: out of memory\n"),
    "memory-with-message": (
        MemoryError("Unable to allocate 8 GiB"),
        1,
        "fastnaive: error: out of memory (Unable to allocate 8 GiB)\n",
    ),
    "os": (PermissionError(13, "Permission denied", "x.npz"), 1, "Permission denied"),
    "bad-zip": (zipfile.BadZipFile("File is not a zip file"), 1, "File is not a zip file"),
    "runtime": (RuntimeError("weights differ"), 1, "RuntimeError: weights differ"),
    "recursion": (RecursionError(), 1, "fastnaive: error: RecursionError\n"),
    "floating-point": (FloatingPointError("loss is nan"), 1, "loss is nan"),
    "interrupt": (KeyboardInterrupt(), 130, "fastnaive: interrupted\n"),
}


@pytest.mark.parametrize("error, status, line", FAILURES.values(), ids=FAILURES.keys())
def test_every_expected_failure_is_one_line_never_a_traceback(
    monkeypatch, data, error, status, line
):
    def fail(*args):
        raise error

    monkeypatch.setattr(cli, "load_dataset", fail)
    got, out, err = run(["train", *[arg.format(data=data) for arg in QUICK]])
    assert got == status
    assert err.startswith("fastnaive: ") and err.count("\n") == 1 and line in err


def test_python_m_fastnaive_out_of_memory_is_one_line(tmp_path, data):
    """A real MemoryError: a hidden layer too large to allocate."""
    result = run_module("train", "--epochs", "1", "--hidden", "2000000000", "--data", data)
    assert result.returncode == 1
    # Under .ci/sanitize, AddressSanitizer's runtime adds a "==PID==WARNING" line of its own.
    stderr = "".join(line for line in result.stderr.splitlines(True) if not line.startswith("=="))
    assert stderr.startswith("fastnaive: error: out of memory")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


def test_info_reports_a_place_it_cannot_read_and_goes_on(monkeypatch, tmp_path):
    unreadable = str(tmp_path / ("x" * 300))  # a name longer than any file system allows
    monkeypatch.setenv("FASTNAIVE_DATA", unreadable)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    status, out, err = run(["info"])
    assert (status, err) == (0, "")
    line = next(line for line in out.splitlines() if f"FASTNAIVE_DATA={unreadable}" in line)
    assert line.endswith(("File name too long)", "no such file or directory"))
    assert f"Keras cache {tmp_path / 'keras'}" in out and "\nfashion_mnist:\n" in out


def test_readme_states_the_exit_statuses_these_tests_check():
    """The exit statuses of test_bad_value_is_one_error_line_and_status_1 and
    test_usage_error_exits_2, as README.md's command-line section states them."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    text = " ".join(readme.split())
    assert "one line on stderr and exit status 1" in text
    assert "prints the usage and exits 2" in text


@pytest.mark.parametrize(
    "options, loss",
    [
        (
            ["--activation", "gelu", "--dropout", "0.2", "--l2", "1e-4"],
            "sparse_categorical_crossentropy",
        ),
        (
            ["--activation", "tanh", "--loss", "categorical_crossentropy"],
            "categorical_crossentropy",
        ),
        (["--activation", "elu", "--loss", "binary_crossentropy"], "binary_crossentropy"),
        (["--activation", "leaky_relu", "--loss", "mse"], "mean_squared_error"),
    ],
    ids=["gelu-dropout-l2", "tanh-categorical", "elu-binary", "leaky-mse"],
)
def test_activation_loss_l2_and_dropout_options_build_and_train_that_model(
    tmp_path, data, options, loss
):
    path = tmp_path / "m.npz"
    argv = [*TRAIN[:-2], "--verbose", "0", "--data", data, *options, "--save", str(path)]
    status, out, err = run(argv)
    assert (status, err) == (0, "")
    model = fastnaive.load_model(path)
    assert model.loss.name == loss
    assert model.dense_layers[0].activation == options[1]
    assert (len(model.layers) == 5) == ("--dropout" in options)  # a Dropout after each hidden
    assert all(layer.l2 == (1e-4 if "--l2" in options else 0) for layer in model.dense_layers)
    trained_accuracy = float(ACCURACY.search(out).group(1))
    assert trained_accuracy > 0.5  # two epochs learn the synthetic squares
    status, out, _ = run(["evaluate", str(path), "--data", data])
    assert status == 0 and float(ACCURACY.search(out).group(1)) == trained_accuracy
