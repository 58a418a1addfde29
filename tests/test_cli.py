"""The command line, in process through fastnaive.cli.main and as `python -m fastnaive`.

Every run reads a small synthetic MNIST-layout .npz: each class lights its own
7x7 square of the 28x28 image, over noise, so two epochs learn it.
"""

import contextlib
import importlib.metadata
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import fastnaive
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
