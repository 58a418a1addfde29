"""The command line, run as a user runs it: the `fastnaive` console script (and
`python -m fastnaive`) in a new process.

Most runs read a small synthetic mnist.npz: each class lights its own 7x7 square of the
28x28 image, over noise, so two epochs learn it. Every process runs with FASTNAIVE_DATA
unset, the Keras cache in an empty folder and the network behind a proxy that refuses
every connection: a run that would download fails at once instead.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import fastnaive
from fastnaive import cli, saving

FASTNAIVE = str(Path(sys.executable).with_name("fastnaive"))
REAL_DATA = os.environ.get("FASTNAIVE_DATA")
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
TIMEOUT = 120
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
QUICK = ["--epochs", "1", "--hidden", "8", "--verbose", "0"]
ACCURACY = re.compile(r"test accuracy: (\d\.\d{4})$", re.MULTILINE)


def synthetic_mnist(n, rng):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 64, (n, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels):
        row, col = divmod(int(label), 4)
        image[7 * row : 7 * row + 7, 7 * col : 7 * col + 7] = 255
    return images, labels


def write_synthetic(path, seed=0):
    rng = np.random.default_rng(seed)
    x_train, y_train = synthetic_mnist(N_TRAIN, rng)
    x_test, y_test = synthetic_mnist(N_TEST, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The path, as a str, of the synthetic mnist.npz, alone in its folder."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "mnist.npz")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of every run: no FASTNAIVE_DATA, an empty Keras cache, no network."""
    home = tmp_path_factory.mktemp("home")
    variables = {**os.environ, "HOME": str(home), "KERAS_HOME": str(home / "keras")}
    variables.pop("FASTNAIVE_DATA", None)
    refused = "http://127.0.0.1:9"  # the discard port: nothing listens there
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        variables[name] = refused
    for name in ("no_proxy", "NO_PROXY"):
        variables.pop(name, None)
    return variables


def fastnaive_run(env, *args, extra_env=None, command=(FASTNAIVE,)):
    """Run `fastnaive args` (or `command args`) to its end; return the CompletedProcess."""
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**env, **(extra_env or {})},
    )


def assert_one_error_line(result, *named, status=1):
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith("fastnaive: ") and result.stderr.count("\n") == 1, result.stderr
    assert all(text in result.stderr for text in named), result.stderr


def png_text(path):
    """The tEXt fields of the PNG at `path`, as {keyword: text}."""
    raw, fields, at = Path(path).read_bytes(), {}, 8
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    while at < len(raw):
        length, kind = int.from_bytes(raw[at : at + 4], "big"), raw[at + 4 : at + 8]
        body = raw[at + 8 : at + 8 + length]
        if kind == b"tEXt":
            key, _, text = body.partition(b"\0")
            fields[key.decode("latin-1")] = text.decode("latin-1")
        elif kind == b"zTXt":
            key, _, packed = body.partition(b"\0")
            fields[key.decode("latin-1")] = zlib.decompress(packed[1:]).decode("latin-1")
        at += 12 + length
    return fields


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data, env):
    """The folder and the stdout of one `train ... --save --history --plot` run."""
    folder = tmp_path_factory.mktemp("trained")
    result = fastnaive_run(
        env,
        *TRAIN,
        "--data",
        data,
        "--save",
        folder / "m.npz",
        "--history",
        folder / "h.json",
        "--plot",
        folder / "p.png",
    )
    assert (result.returncode, result.stderr) == (0, "")
    return folder, result.stdout


# What train says and writes


def test_train_says_what_it_loaded_then_each_epoch_then_the_test_accuracy(trained, data):
    _, out = trained
    lines = out.splitlines()
    assert lines[0] == f"data: MNIST from {data} (--data)"
    assert (
        lines[1]
        == f"  {N_TRAIN} training and {N_TEST} test images of 28x28, labels 0-9 not as published"
    )
    assert lines[2] == "  pixels uint8 in [0, 255]; inputs x / 255 as float32, in [0, 1]"
    assert (
        lines[3] == "model: 784-32-16-10 (relu, relu, softmax), float32; Adam (learning rate 0.01)"
    )
    assert [line.split(" - ")[0] for line in lines[4:6]] == ["Epoch 1/2", "Epoch 2/2"]
    assert all("val_loss:" in line for line in lines[4:6])
    assert float(ACCURACY.search(out).group(1)) > 0.5  # chance is 0.1


def test_train_writes_a_model_that_records_its_dataset_and_input_scaling(trained):
    folder, out = trained
    model = fastnaive.load_model(folder / "m.npz")
    assert [(layer.input_size, layer.output_size, layer.activation) for layer in model.layers] == [
        (784, 32, "relu"),
        (32, 16, "relu"),
        (16, 10, "softmax"),
    ]
    assert saving.read_metadata(folder / "m.npz") == {
        "dataset": "mnist",
        "input_scaling": "x / 255",
    }
    assert f"model saved to {folder / 'm.npz'}\n" in out


def test_train_writes_the_history_as_json(trained):
    folder, _ = trained
    history = json.loads((folder / "h.json").read_text())
    assert list(history) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert history["epoch"] == [0, 1] and all(len(values) == 2 for values in history.values())


def test_the_plot_is_titled_with_dataset_model_optimizer_and_test_accuracy(trained):
    folder, out = trained
    title = png_text(folder / "p.png")["Title"]
    accuracy = ACCURACY.search(out).group(1)
    assert title.startswith("MNIST: 784-32-16-10 (relu, relu, softmax), Adam (learning rate 0.01)")
    assert title.endswith(f"\n2 epochs, test accuracy {accuracy}")


def test_the_plot_numbers_epochs_as_the_history_file_does():
    history = fastnaive.callbacks.History()
    for epoch in (3, 4, 5):  # a resumed run: its History starts at epoch 3
        history.on_epoch_end(epoch, {"loss": 1.0 / epoch, "accuracy": 0.1 * epoch})
    figure = cli.history_figure(history, "title")
    try:
        loss_axes, accuracy_axes = figure.axes
        for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
            [line] = axes.lines
            assert list(line.get_xdata()) == history.epoch == [3, 4, 5]
            assert list(line.get_ydata()) == history.history[metric]
            assert "as in --history" in axes.get_xlabel()
        assert figure.get_suptitle() == "title"
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)


def test_history_as_csv_with_one_thread(tmp_path, data, env):
    result = fastnaive_run(
        env, "train", *QUICK, "--epochs", "2", "--threads", "1", "--data", data,
        "--history", tmp_path / "h.csv",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    header, *rows = (tmp_path / "h.csv").read_text().splitlines()
    assert header == "epoch,loss,accuracy"
    assert [row.split(",")[0] for row in rows] == ["0", "1"]
    assert all(np.isfinite(float(value)) for row in rows for value in row.split(",")[1:])


def test_threads_past_the_usable_cpus_are_named(data, env):
    result = fastnaive_run(env, "train", *QUICK, "--threads", "64", "--data", data)
    assert result.returncode == 0, result.stderr
    found = re.search(r"^threads: (\d+) \(--threads 64; this process can keep \1 CPUs busy\)$",
                      result.stdout, re.MULTILINE)  # fmt: skip
    assert found and 1 <= int(found.group(1)) < 64
    result = fastnaive_run(env, "train", *QUICK, "--threads", "1", "--data", data)
    assert result.returncode == 0 and "threads:" not in result.stdout


# evaluate


def test_evaluate_prints_the_accuracy_train_printed(trained, data, env):
    folder, out = trained
    result = fastnaive_run(env, "evaluate", folder / "m.npz", "--data", data)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"data: MNIST from {data} (--data)\n")
    assert ACCURACY.search(result.stdout).group(1) == ACCURACY.search(out).group(1)


def test_evaluate_refuses_a_dataset_other_than_the_models(trained, tmp_path, env):
    folder, _ = trained
    result = fastnaive_run(env, "evaluate", folder / "m.npz", "--dataset", "fashion_mnist")
    assert_one_error_line(result, "trained on mnist", "--dataset fashion_mnist")
    clothes = write_synthetic(tmp_path / "fashion_mnist.npz")  # Fashion-MNIST, by its name
    result = fastnaive_run(env, "evaluate", folder / "m.npz", "--data", clothes)
    assert_one_error_line(result, "trained on mnist", "holds fashion_mnist", clothes)


@pytest.mark.mnist
def test_evaluate_refuses_a_fashion_model_on_the_real_mnist(tmp_path, env):
    """The reported case: a Fashion-MNIST model evaluated on MNIST gave 0.08 and status 0."""
    path = tmp_path / "fashion.npz"
    model = cli.build_model(cli.build_parser().parse_args(["train", "--hidden", "8"]))
    saving.save_model(
        model, path, metadata={"dataset": "fashion_mnist", "input_scaling": "x / 255"}
    )
    # FASTNAIVE_DATA holds MNIST only: evaluate looks for the model's dataset, and finds Debian's.
    result = fastnaive_run(env, "evaluate", path, extra_env={"FASTNAIVE_DATA": REAL_DATA})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"data: Fashion-MNIST from {DEBIAN_FASHION}")
    result = fastnaive_run(env, "evaluate", path, "--data", REAL_DATA)
    assert_one_error_line(result, "trained on fashion_mnist", "holds mnist")
    result = fastnaive_run(env, "evaluate", path, "--dataset", "mnist")
    assert_one_error_line(result, "trained on fashion_mnist", "not --dataset mnist")


def test_evaluate_refuses_inputs_scaled_otherwise(tmp_path, data, env):
    path = tmp_path / "raw-pixels.npz"
    model = cli.build_model(cli.build_parser().parse_args(["train", "--hidden", "8"]))
    saving.save_model(model, path, metadata={"dataset": "mnist", "input_scaling": "x"})
    result = fastnaive_run(env, "evaluate", path, "--data", data)
    assert_one_error_line(result, "inputs scaled as 'x'", "'x / 255'")


def test_evaluate_of_a_model_without_metadata_says_so(tmp_path, data, env):
    path = tmp_path / "plain.npz"
    cli.build_model(cli.build_parser().parse_args(["train", "--hidden", "8"])).save(path)
    result = fastnaive_run(env, "evaluate", path, "--data", data)
    assert (result.returncode, result.stderr) == (0, "")
    assert f"note: {path} does not record its dataset; evaluating on MNIST\n" in result.stdout


# Where the data comes from


def test_data_holding_fashion_mnist_is_trained_as_fashion_mnist(tmp_path, env):
    """`--data /usr/share/datasets/fashion-mnist` without --dataset: told by its labels."""
    result = fastnaive_run(
        env, "train", *QUICK, "--epochs", "0", "--data", DEBIAN_FASHION,
        "--save", tmp_path / "m.npz",
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0] == f"data: Fashion-MNIST from {DEBIAN_FASHION} (--data)"
    assert lines[1] == "  60000 training and 10000 test images of 28x28, labels 0-9 as published"
    assert saving.read_metadata(tmp_path / "m.npz")["dataset"] == "fashion_mnist"
    result = fastnaive_run(env, "train", *QUICK, "--data", DEBIAN_FASHION, "--dataset", "mnist")
    assert_one_error_line(result, "Expected MNIST", "Fashion-MNIST", "--dataset fashion_mnist")


def test_data_that_cannot_be_told_apart_needs_dataset(tmp_path, env):
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, array in [
        ("train-images-idx3-ubyte", synthetic_mnist(N_TRAIN, rng)[0]),
        ("train-labels-idx1-ubyte", rng.integers(0, 10, N_TRAIN).astype(np.uint8)),
        ("t10k-images-idx3-ubyte", synthetic_mnist(N_TEST, rng)[0]),
        ("t10k-labels-idx1-ubyte", rng.integers(0, 10, N_TEST).astype(np.uint8)),
    ]:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
        (folder / name).write_bytes(header + array.tobytes())
    result = fastnaive_run(env, "train", *QUICK, "--data", folder)
    assert_one_error_line(result, "--data", "--dataset mnist or --dataset fashion_mnist")
    result = fastnaive_run(env, "train", *QUICK, "--data", folder, "--dataset", "fashion_mnist")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"data: Fashion-MNIST from {folder} (--data)\n")


@pytest.mark.parametrize("value", ["missing", "empty-folder"])
def test_a_fastnaive_data_naming_nothing_usable_is_an_error_naming_it(tmp_path, env, value):
    (tmp_path / "empty-folder").mkdir()
    result = fastnaive_run(
        env, "train", *QUICK, extra_env={"FASTNAIVE_DATA": str(tmp_path / value)}
    )
    assert_one_error_line(result, f"FASTNAIVE_DATA='{tmp_path / value}'")
    assert "Downloading" not in result.stderr


def test_a_data_option_naming_nothing_usable_is_an_error_naming_it(tmp_path, env):
    result = fastnaive_run(env, "train", *QUICK, "--data", tmp_path / "missing.npz")
    assert_one_error_line(result, f"--data='{tmp_path / 'missing.npz'}'")


def test_offline_with_no_data_says_which_url_failed_and_where_to_put_the_file(env):
    result = fastnaive_run(env, "train", *QUICK)
    keras_cache = Path(env["KERAS_HOME"]) / "datasets" / "mnist.npz"
    url = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
    trying, error = result.stderr.split("\n", 1)
    assert trying == f"Downloading {url} to {keras_cache}"
    result.stderr = error
    assert_one_error_line(result, "MNIST not found", f"download failed: {url}: Connection")
    assert "To fix: pass --data an .npz file" in error
    assert f"download {url} elsewhere and put it at {keras_cache}." in error


# Checked before any data is loaded


def block_matplotlib(tmp_path):
    """An environment addition under which `import matplotlib` fails, as when not installed."""
    package = tmp_path / "blocked" / "matplotlib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    return {"PYTHONPATH": str(tmp_path / "blocked")}


OUTPUTS = {
    "save-in-missing-folder": (["--save", "{tmp}/missing/m.npz"], {}, "--save", "not exist"),
    "save-unwritable": (["--save", "/proc/m.npz"], {}, "--save", "no file can be written"),
    "save-a-folder": (["--save", "{tmp}"], {}, "--save", "is a folder"),
    "history-in-missing-folder": (["--history", "{tmp}/missing/h.json"], {}, "--history", "not"),
    "plot-unwritable": (["--plot", "/proc/p.png"], {}, "--plot", "no file can be written"),
    "plot-without-matplotlib": (["--plot", "{tmp}/p.png"], "block", "--plot", "pip install"),
    "checkpoint-dir-a-file": (["--checkpoint-dir", "{tmp}/file"], {}, "--checkpoint-dir", "file"),
    "checkpoint-dir-unwritable": (["--checkpoint-dir", "/proc/run"], {}, "--checkpoint-dir", ""),
}


@pytest.mark.parametrize("options, extra, option, reason", OUTPUTS.values(), ids=OUTPUTS.keys())
def test_every_output_is_checked_before_the_data_is_loaded(
    tmp_path, env, options, extra, option, reason
):
    """With a --data that names nothing, the error is the output's: it came first."""
    (tmp_path / "file").write_text("in the way")
    extra = block_matplotlib(tmp_path) if extra == "block" else extra
    options = [arg.format(tmp=tmp_path) for arg in options]
    result = fastnaive_run(
        env, "train", *QUICK, "--data", tmp_path / "nothing", *options, extra_env=extra
    )
    assert_one_error_line(result, option, reason)
    assert result.stdout == "" and "nothing" not in result.stderr


# Ctrl-C


def test_ctrl_c_saves_the_model_and_exits_130(tmp_path, data, env):
    """A real SIGINT once the first epoch's line is out: one line, a loadable model, 130."""
    process = subprocess.Popen(
        [FASTNAIVE, "train", "--epochs", "100000", "--hidden", "16", "--verbose", "2"]
        + [
            "--data",
            data,
            "--save",
            str(tmp_path / "m.npz"),
            "--history",
            str(tmp_path / "h.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # A shell's background job inherits SIGINT ignored; the test wants Python's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        while not (lines and lines[-1].startswith("Epoch 1/100000")):
            lines.append(process.stdout.readline())
            assert lines[-1], f"no epoch line: {lines} {process.stderr.read()}"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    match = re.fullmatch(
        r"fastnaive: interrupted at epoch (\d+)/100000, batch (\d+)/5: the model holds the "
        r"weights after that batch\n",
        err,
    )
    assert process.returncode == 130 and match, err
    assert f"model saved to {tmp_path / 'm.npz'} (the weights after the last complete step)" in out
    model = fastnaive.load_model(tmp_path / "m.npz")
    assert model.dense_layers[0].W.shape == (784, 16) and np.isfinite(model.weights[0]).all()
    assert saving.read_metadata(tmp_path / "m.npz")["dataset"] == "mnist"
    epochs = json.loads((tmp_path / "h.json").read_text())["epoch"]
    assert epochs == list(range(int(match.group(1)) - 1))  # the epochs complete before it
    assert "Traceback" not in out + err


# Options and help


class Recording(argparse.ArgumentParser):
    """A parser that records each option's flags and help as they are added."""

    def __init__(self):
        self.options = []
        super().__init__()

    def add_argument(self, *flags, **settings):
        self.options.append((flags, settings.get("help")))
        return super().add_argument(*flags, **settings)


def test_train_help_documents_every_flag(env):
    result = fastnaive_run(env, "train", "--help", extra_env={"COLUMNS": "1000"})
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    parser = Recording()
    cli.add_train_options(parser)
    assert len(parser.options) > 20  # -h and every option of train
    for flags, help_text in parser.options:
        assert help_text, flags
        for flag in flags:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag
        assert " ".join(help_text.split()) in text, help_text


def declared_dependencies():
    """The names of the installed fastnaive's requirements, leaving out its extras."""
    import importlib.metadata

    return {
        re.match(r"[\w.-]+", requirement).group().lower()
        for requirement in importlib.metadata.requires("fastnaive") or []
        if "extra ==" not in requirement
    }


@pytest.mark.parametrize(
    "argv", [["info"], ["train", *QUICK, "--threads", "1"]], ids=["info", "threads"]
)
def test_runs_with_the_declared_dependencies_only(tmp_path, data, env, argv):
    extra = {}
    if "threadpoolctl" not in declared_dependencies():
        package = tmp_path / "blocked" / "threadpoolctl"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('blocked')\n")
        extra = {"PYTHONPATH": str(tmp_path / "blocked")}
    args = [*argv, "--data", data] if argv[0] == "train" else argv
    assert fastnaive_run(env, *args, extra_env=extra).returncode == 0


def test_info_prints_version_blas_and_data_places(data, env):
    folder = str(Path(data).parent)
    result = fastnaive_run(env, "info", extra_env={"FASTNAIVE_DATA": folder})
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith(f"fastnaive {fastnaive.__version__}, numpy {np.__version__}\n")
    assert re.search(r"^blas: \w+", out, re.MULTILINE)
    assert re.search(r"^CPUs training can use: [1-9]\d* \(may run on [1-9]\d*; ", out, re.M)
    assert f"mnist:\n  FASTNAIVE_DATA={folder}: found\n" in out
    url = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
    assert f"  download {url} into {Path(env['KERAS_HOME']) / 'datasets'}:" in out
    assert "\nfashion_mnist:\n" in out


def test_info_reports_a_place_it_cannot_read_and_goes_on(tmp_path, env):
    unreadable = str(tmp_path / ("x" * 300))  # a name longer than any file system allows
    result = fastnaive_run(env, "info", extra_env={"FASTNAIVE_DATA": unreadable})
    assert (result.returncode, result.stderr) == (0, "")
    line = next(
        line for line in result.stdout.splitlines() if f"FASTNAIVE_DATA={unreadable}" in line
    )
    assert "unusable, an error" in line and line.endswith(("File name too long)", "directory"))
    assert f"Keras cache {env['KERAS_HOME']}" in result.stdout
    assert "\nfashion_mnist:\n" in result.stdout


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
    "checkpoint-dir-a-file": (["train", *QUICK, "--checkpoint-dir", "{tmp}/garbage.npz"], "folder"),
    "model-unreadable": (["evaluate", "{tmp}/garbage.npz", "--data", "{data}"], "garbage.npz"),
    "model-missing": (["evaluate", "{tmp}/missing.npz", "--data", "{data}"], "missing.npz"),
}


@pytest.mark.parametrize("argv, named", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_value_is_one_error_line_and_status_1(tmp_path, data, env, argv, named):
    (tmp_path / "garbage.npz").write_text("not a model\n")
    argv = [arg.format(data=data, tmp=tmp_path) for arg in argv]
    if argv[0] == "train" and "--data" not in argv:
        argv += ["--data", data]
    assert_one_error_line(fastnaive_run(env, *argv), named)


USAGE_ERRORS = {
    "unknown-option": ["train", "--bogus"],
    "unknown-optimizer": ["train", "--optimizer", "rmsprop"],
    "hidden-0": ["train", "--hidden", "0"],
    "epochs-word": ["train", "--epochs", "two"],
    "unknown-command": ["frobnicate"],
}


@pytest.mark.parametrize("argv", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_error_exits_2(env, argv):
    result = fastnaive_run(env, *argv)
    assert result.returncode == 2 and "usage: fastnaive" in result.stderr


def test_checkpoints_resume_without_distributed_to_the_weights_of_an_uninterrupted_run(
    tmp_path, data, env
):
    settings = [*QUICK[2:], "--data", data, "--optimizer", "momentum", "--shuffle", "--seed", "1"]
    whole = fastnaive_run(env, "train", *settings, "--epochs", "3", "--save", tmp_path / "w.npz")
    assert whole.returncode == 0, whole.stderr
    folder = tmp_path / "run"
    first = fastnaive_run(env, "train", *settings, "--epochs", "1", "--checkpoint-dir", folder)
    assert first.returncode == 0, first.stderr
    result = fastnaive_run(
        env, "train", *settings, "--epochs", "3", "--checkpoint-dir", folder, "--resume",
        "--save", tmp_path / "resumed.npz",
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "") and "trained 2 epochs" in result.stdout
    whole, resumed = (fastnaive.load_model(tmp_path / f"{name}.npz") for name in ("w", "resumed"))
    for got, expected in zip(resumed.weights, whole.weights, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_a_folder_holding_a_checkpoint_needs_resume_or_overwrite(tmp_path, data, env):
    folder = tmp_path / "run"
    train = ["train", *QUICK, "--data", data, "--checkpoint-dir", folder]
    assert fastnaive_run(env, *train).returncode == 0
    (folder / "notes.txt").write_text("the user's notes")
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    assert_one_error_line(
        fastnaive_run(env, *train), "holding state.npz", "--resume", "--overwrite"
    )
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert fastnaive_run(env, *train, "--overwrite", "--seed", "3").returncode == 0
    assert sorted(os.listdir(folder)) == ["model-0001.npz", "notes.txt", "state.npz"]
    assert (folder / "model-0001.npz").read_bytes() != before["model-0001.npz"]


def test_python_m_fastnaive_without_command_trains(data, env):
    result = fastnaive_run(
        env,
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--data",
        data,
        command=(sys.executable, "-m", "fastnaive"),
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("data: MNIST from ") and ACCURACY.search(result.stdout)
    assert "\nEpoch 1/1 - " in result.stdout  # not a terminal: a line per epoch


FAILURES = {
    "memory": ("MemoryError()", 1, "fastnaive: error: out of memory\n"),
    "memory-with-message": (
        "MemoryError('Unable to allocate 8 GiB')",
        1,
        "fastnaive: error: out of memory (Unable to allocate 8 GiB)\n",
    ),
    "os": ("PermissionError(13, 'Permission denied', 'x.npz')", 1, "Permission denied"),
    "bad-zip": ("zipfile.BadZipFile('File is not a zip file')", 1, "File is not a zip file"),
    "runtime": ("RuntimeError('weights differ')", 1, "RuntimeError: weights differ"),
    "recursion": ("RecursionError()", 1, "fastnaive: error: RecursionError\n"),
    "floating-point": ("FloatingPointError('loss is nan')", 1, "loss is nan"),
    "interrupt": ("KeyboardInterrupt()", 130, "fastnaive: interrupted\n"),
}

# Runs the command line with load_dataset raising the error given as argv[1].
INJECT = """
import sys, zipfile
from fastnaive import cli
def fail(*args):
    raise eval(sys.argv[1])
cli.load_dataset = fail
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("error, status, line", FAILURES.values(), ids=FAILURES.keys())
def test_every_expected_failure_is_one_line_never_a_traceback(data, env, error, status, line):
    result = fastnaive_run(
        env, error, "train", *QUICK, "--data", data, command=(sys.executable, "-c", INJECT)
    )
    assert_one_error_line(result, line, status=status)


def test_python_m_fastnaive_out_of_memory_is_one_line(data, env):
    """A real MemoryError: a hidden layer too large to allocate."""
    result = fastnaive_run(env, "train", "--epochs", "1", "--hidden", "2000000000", "--data", data)
    assert result.returncode == 1
    # Under .ci/sanitize, AddressSanitizer's runtime adds a "==PID==WARNING" line of its own.
    stderr = "".join(line for line in result.stderr.splitlines(True) if not line.startswith("=="))
    assert stderr.startswith("fastnaive: error: out of memory")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


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
    tmp_path, data, env, options, loss
):
    path = tmp_path / "m.npz"
    argv = [*TRAIN[:-2], "--verbose", "0", "--data", data, *options, "--save", path]
    result = fastnaive_run(env, *argv)
    assert (result.returncode, result.stderr) == (0, "")
    model = fastnaive.load_model(path)
    assert model.loss.name == loss
    assert model.dense_layers[0].activation == options[1]
    assert (len(model.layers) == 5) == ("--dropout" in options)  # a Dropout after each hidden
    assert all(layer.l2 == (1e-4 if "--l2" in options else 0) for layer in model.dense_layers)
    trained_accuracy = float(ACCURACY.search(result.stdout).group(1))
    assert trained_accuracy > 0.5  # two epochs learn the synthetic squares
    result = fastnaive_run(env, "evaluate", path, "--data", data)
    assert (
        result.returncode == 0
        and float(ACCURACY.search(result.stdout).group(1)) == trained_accuracy
    )
