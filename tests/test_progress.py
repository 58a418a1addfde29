"""What training prints (fastnaive.progress), by `verbose`: the bar on a real terminal (a
pseudo-terminal of 80 and 120 columns, through the console script), the bar printed once per
epoch where it cannot be redrawn, "auto", and the book's lines as they come."""

import io
import math
import os
import pty
import re
import select
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_data, make_model

import fastnaive
from fastnaive import cli, progress

FASTNAIVE = str(Path(sys.executable).with_name("fastnaive"))
REAL_DATA = os.environ.get("FASTNAIVE_DATA")
TIMEOUT = 120
# One escape sequence of a terminal (a cursor move, a colour), to leave out of a line's width.
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
METRICS = r"loss: \d+\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d+\.\d{4} - val_accuracy: \d\.\d{4}"


def run_on_terminal(argv, columns):
    """Run `argv` with a pseudo-terminal of `columns` columns as its stdin, stdout and stderr;
    return (exit status, every screen line it drew: the text between carriage returns and
    newlines, escape sequences left out)."""
    import fcntl
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    output = b""
    try:
        while select.select([main], [], [], TIMEOUT)[0]:
            try:
                chunk = os.read(main, 1 << 16)
            except OSError:  # EIO: the child's side is closed
                break
            if not chunk:
                break
            output += chunk
        status = process.wait(timeout=TIMEOUT)
    finally:
        process.kill()
        os.close(main)
    text = ESCAPE.sub("", output.decode())
    return status, [part for line in text.split("\n") for part in line.split("\r") if part]


@pytest.mark.mnist
@pytest.mark.parametrize("columns", [80, 120])
def test_the_bar_keeps_to_the_terminal_and_the_epochs_metrics_are_never_cut(columns):
    status, screen = run_on_terminal(
        [FASTNAIVE, "train", "--epochs", "1", "--hidden", "32", "--verbose", "1"]
        + ["--validation-split", "0.1", "--data", REAL_DATA],
        columns,
    )
    assert status == 0, screen
    assert max(len(part) for part in screen) <= columns, [p for p in screen if len(p) > columns]
    bars = [part for part in screen if part.startswith("Epoch 1/1 ")]
    assert bars[-1].startswith("Epoch 1/1 100%|") and "| 422/422 [" in bars[-1], bars[-1]
    assert not bars[-1].rstrip().endswith(("loss", ",")), bars[-1]  # nothing cut off
    metrics = screen[screen.index(bars[-1]) + 1]
    assert re.fullmatch(METRICS, metrics), metrics  # the epoch's metrics, whole, on their own
    running = [part for part in bars if re.search(r"loss \d\.\d{4} - acc \d\.\d{4}\]$", part)]
    assert running, bars  # the running loss and accuracy show while the epoch runs


@pytest.mark.mnist
def test_verbose_auto_is_a_bar_on_a_terminal():
    status, screen = run_on_terminal(
        [FASTNAIVE, "train", "--epochs", "1", "--hidden", "8", "--data", REAL_DATA], 80
    )
    assert status == 0
    assert any(part.startswith("Epoch 1/1 100%|") for part in screen), screen
    assert not any(part.startswith("Epoch 1/1 - ") for part in screen)


def test_verbose_auto_is_a_line_per_epoch_elsewhere(capsys):
    model = make_model()
    x, y = make_data()
    history = fastnaive.fit(model, x, y, 2, 16, verbose="auto")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    assert lines[1].endswith(f"loss: {history.history['loss'][1]:.4f} - accuracy: "
                             f"{history.history['accuracy'][1]:.4f}")  # fmt: skip


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_auto_picks_the_bar_where_it_can_be_redrawn(monkeypatch):
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert type(progress.logger("auto")) is progress.ProgressBar
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert type(progress.logger("auto")) is progress.EpochLogger
    assert progress.logger(0) is None


def test_verbose_1_where_a_bar_cannot_be_redrawn_prints_it_once_per_epoch(capsys):
    model = make_model()
    x, y = make_data(50)
    history = fastnaive.fit(model, x, y, 2, 16, validation_split=0.2, verbose=1)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 4
    for epoch in range(2):
        bar, metrics = lines[2 * epoch : 2 * epoch + 2]
        assert re.fullmatch(rf"Epoch {epoch + 1}/2 100%\|█+\| 3/3 \[\d\d:\d\d<00:00\]", bar), bar
        assert len(bar) <= progress.STATIC_COLUMNS
        logs = {key: values[epoch] for key, values in history.history.items()}
        assert metrics == " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


def test_the_running_loss_and_accuracy_show_compactly_in_the_bar(monkeypatch):
    """The bar's postfix after a batch whose logs are the epoch's running means."""
    monkeypatch.setattr(sys, "stdout", Terminal())
    bar = progress.ProgressBar()
    bar.set_params({"epochs": 3, "steps": 10, "samples": 1280, "batch_size": 128})
    bar.on_epoch_begin(1)
    bar.on_batch_end(0, {"loss": 0.51234, "accuracy": 0.75})
    shown = str(bar.bar)
    assert shown.startswith("Epoch 2/3  10%|") and "| 1/10 [" in shown
    assert shown.endswith(", loss 0.5123 - acc 0.7500]")
    bar.on_epoch_end(1, {"loss": 0.5, "accuracy": 0.75, "val_loss": 0.6, "val_accuracy": 0.7})
    lines = sys.stdout.getvalue().split("\r")[-1].splitlines()
    assert lines[-1] == "loss: 0.5000 - accuracy: 0.7500 - val_loss: 0.6000 - val_accuracy: 0.7000"


def test_book_lines_print_each_batchs_own_loss_not_the_running_mean(capsys):
    """The book prints a batch's own loss: logs["batch_loss"], beside the epoch's mean."""
    book = progress.BookLogger()
    book.set_params({"epochs": 1, "steps": 250, "samples": 32_000, "batch_size": 128})
    book.on_epoch_begin(0)
    for batch in range(250):
        book.on_train_batch_end(batch, {"loss": 9.0, "accuracy": 0.5, "batch_loss": batch / 7})
    expected = ["Epoch 0", "loss at batch 0: 0.00", "loss at batch 100: 14.29"]
    assert capsys.readouterr().out.splitlines() == [*expected, "loss at batch 200: 28.57"]


@pytest.mark.mnist
def test_verbose_book_prints_the_books_lines_as_it_trains():
    """The book's loop (one_training_step over its BatchGenerator) is the oracle: the same
    lines, each out while training still runs."""
    argv = ["train", "--epochs", "2", "--seed", "0", "--verbose", "book", "--threads", "1"]
    process = subprocess.Popen(
        [FASTNAIVE, *argv, "--data", REAL_DATA], stdout=subprocess.PIPE, text=True
    )
    try:
        lines = []
        while not lines or not lines[-1].startswith("loss at batch 0:"):
            line = process.stdout.readline()
            assert line, f"the output ended before a batch's line: {lines}"
            lines.append(line.rstrip("\n"))
        assert process.poll() is None  # the first batch's line came while training ran
        out, _ = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 0
    printed = [line for line in [*lines, *out.splitlines()] if re.match(r"Epoch \d|loss at", line)]

    model = cli.build_model(cli.build_parser().parse_args(argv))
    (x, y), _ = fastnaive.datasets.mnist.load_data(REAL_DATA)
    x = x.reshape(len(x), -1).astype("float32") / 255
    expected = []
    for epoch in range(2):
        expected.append(f"Epoch {epoch}")
        for batch, (images, labels) in enumerate(fastnaive.BatchGenerator(x, y)):
            loss = fastnaive.one_training_step(model, images, labels)
            if batch % 100 == 0:
                expected.append((batch, loss))
    assert len(printed) == len(expected) == 2 * 6
    for line, wanted in zip(printed, expected):
        if isinstance(wanted, str):
            assert line == wanted
        else:
            batch, loss = wanted
            head, value = line.rsplit(": ", 1)
            assert head == f"loss at batch {batch}"
            assert math.isclose(float(value), loss, abs_tol=0.0051), (line, loss)
