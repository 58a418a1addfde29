"""Keras 3's callbacks and hooks in fit: ModelCheckpoint, BackupAndRestore (a killed process
resumes), CSVLogger, LearningRateScheduler, ReduceLROnPlateau, TerminateOnNaN, EarlyStopping's
baseline and start_from_epoch, stop_training after a batch, and Ctrl-C (TrainingInterrupted)
through a real SIGINT to a real process."""

import collections
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import make_data, make_model

from fastnaive import SGD, Adam, fit, load_model
from fastnaive.callbacks import (
    BackupAndRestore,
    Callback,
    CSVLogger,
    EarlyStopping,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
    has_batch_hooks,
    writes_between_batches,
)

BATCH = 16  # make_data()'s 50 samples: batches of 16, 16, 16 and 2


def short_fit(model, x, y, epochs=3, **settings):
    settings.setdefault("optimizer", SGD(0.05))
    return fit(model, x, y, epochs, BATCH, verbose=0, **settings)


class Scripted(Callback):
    """Logs values[epoch] as `name` at each epoch's end, for the callbacks after it."""

    def __init__(self, name, values):
        self.name, self.values = name, values

    def on_epoch_end(self, epoch, logs=None):
        logs[self.name] = self.values[epoch]


def assert_same_weights(actual, expected):
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_array_equal(a, e, err_msg=f"weights[{i}]")


# Hooks


def test_the_loop_calls_keras_3_hooks_in_order_and_keras_2_names_through_them():
    calls = []

    class Recorder(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            calls.append(("on_train_batch_begin", batch))
            super().on_train_batch_begin(batch, logs)

        def on_batch_begin(self, batch, logs=None):
            calls.append(("on_batch_begin", batch))

        def on_batch_end(self, batch, logs=None):
            calls.append(("on_batch_end", batch, sorted(logs)))

    short_fit(make_model(), *make_data(), epochs=1, callbacks=Recorder())  # not in a list
    expected = []
    for batch in range(4):
        expected += [("on_train_batch_begin", batch), ("on_batch_begin", batch)]
        expected.append(("on_batch_end", batch, ["accuracy", "batch_loss", "loss"]))
    assert calls == expected


def test_stop_training_set_after_a_batch_ends_the_epoch_there():
    model, (x, y) = make_model(), make_data()
    reference = make_model()
    reference.set_weights(model.get_weights())
    stop = LambdaCallback(
        on_train_batch_end=lambda batch, logs: setattr(model, "stop_training", batch == 1)
    )
    history = short_fit(model, x, y, epochs=3, callbacks=[stop])
    assert history.epoch == [0]
    short_fit(reference, x[: 2 * BATCH], y[: 2 * BATCH], epochs=1)
    assert_same_weights(model.weights, reference.weights)


class EpochNotes(Callback):
    def on_epoch_end(self, epoch, logs=None):
        pass


class BatchNotes(Callback):
    def on_batch_end(self, batch, logs=None):
        pass


class ReadOnlyBatchNotes(BatchNotes):
    writes_weights = False


class Duck:
    """A callback by its hooks alone, not a Callback."""

    def on_train_batch_end(self, batch, logs=None):
        pass


@pytest.mark.parametrize(
    "callback, expected",
    [
        (Callback(), False),
        (EpochNotes(), False),
        (LambdaCallback(on_epoch_end=lambda epoch, logs: None), False),
        (BatchNotes(), True),
        (ReadOnlyBatchNotes(), False),
        (LambdaCallback(on_train_batch_begin=lambda batch, logs: None), True),
        (LambdaCallback(on_batch_end=lambda batch, logs: None), True),
        (Duck(), True),
        (EarlyStopping(), False),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, bool) else str(value),
)
def test_writes_between_batches_unless_no_batch_hook_or_declared_read_only(callback, expected):
    assert writes_between_batches(callback) is expected
    assert has_batch_hooks(callback) is (expected or isinstance(callback, ReadOnlyBatchNotes))


class CountsHookCalls(EpochNotes):
    """Epoch hooks of its own, and a count of the calls to any hook."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if not name.startswith("on_"):
            return value
        calls = object.__getattribute__(self, "calls")

        def counted(*args, **kwargs):
            calls[name] += 1
            return value(*args, **kwargs)

        counted.__func__ = getattr(value, "__func__", value)  # the hook it stands for
        return counted


def test_fit_calls_batch_hooks_only_of_callbacks_that_have_them():
    """Callback's batch hooks do nothing: fit calls a callback's per batch only where it has
    its own (a Keras model's CallbackList skips them too); a callback that has them gets
    each batch's logs."""
    quiet, ends = CountsHookCalls(), []
    batches = LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(dict(logs)))
    fit(make_model(), *make_data(50), 2, 16, callbacks=[quiet, batches], verbose=0)
    assert quiet.calls["on_epoch_end"] == 2
    assert not any("batch" in name for name in quiet.calls)
    assert len(ends) == 8  # 50 samples in batches of 16, twice
    assert all(set(logs) == {"loss", "accuracy", "batch_loss"} for logs in ends)


@pytest.mark.parametrize(
    "callback, per_epoch",
    [(EpochNotes(), 1), (BatchNotes(), 5), (ReadOnlyBatchNotes(), 0)],  # 4 batches an epoch
    ids=["epoch hook", "batch hook", "read-only"],
)
def test_fit_measures_the_weights_again_after_the_hooks_that_may_write_them(
    monkeypatch, callback, per_epoch
):
    """The overflow guard's bound of the weights is measured again after each hook that may
    have written them: a callback with no batch hook costs no measure per batch."""
    from fastnaive import engine

    calls = []
    monkeypatch.setattr(engine.Step, "weights_changed", lambda self: calls.append(1))
    short_fit(make_model(), *make_data(), epochs=3, callbacks=[callback])
    assert len(calls) == 3 * per_epoch


def test_fit_gives_callbacks_the_optimizer_on_the_model():
    seen = []
    optimizer = Adam(1e-3)
    model = make_model()
    record = LambdaCallback(on_train_begin=lambda logs: seen.append(model.optimizer))
    short_fit(model, *make_data(), optimizer=optimizer, callbacks=[record])
    assert seen == [optimizer]


def test_initial_epoch_runs_the_later_epochs_with_their_shuffled_orders():
    x, y = make_data()
    whole, later = make_model(), make_model()
    orders = []
    record = LambdaCallback(on_epoch_begin=lambda epoch, logs: orders.append(epoch))
    one = short_fit(whole, x, y, epochs=1, shuffle=True, seed=5)
    later.set_weights(whole.get_weights())
    history = short_fit(
        later, x, y, epochs=3, shuffle=True, seed=5, initial_epoch=1, callbacks=[record]
    )
    assert history.epoch == [1, 2] and orders == [1, 2] and one.epoch == [0]
    whole_again = make_model()
    short_fit(whole_again, x, y, epochs=3, shuffle=True, seed=5)
    assert_same_weights(later.weights, whole_again.weights)


# EarlyStopping


def epochs_run(values, **settings):
    model, (x, y) = make_model(), make_data()
    stopping = EarlyStopping(monitor="score", **settings)
    history = short_fit(model, x, y, epochs=len(values), callbacks=[Scripted("score", values)])
    del history
    history = short_fit(
        model, x, y, epochs=len(values), callbacks=[Scripted("score", values), stopping]
    )
    return len(history.epoch)


@pytest.mark.parametrize(
    "values, settings, expected",
    [
        ([5] * 6, {"baseline": 2.5, "patience": 2}, 2),  # epoch 0 did not beat the baseline
        ([5] * 6, {"patience": 2}, 3),
        ([5, 4, 3, 2, 1, 0], {"baseline": 2.5, "patience": 2}, 6),  # improving: never stops
        ([1, 2, 3, 4, 5, 6], {"start_from_epoch": 3, "patience": 1}, 5),
        ([1, 2, 3, 4, 5, 6], {"patience": 1}, 2),
    ],
)
def test_early_stopping_baseline_and_start_from_epoch_as_keras(values, settings, expected):
    assert epochs_run(values, **settings) == expected


# ModelCheckpoint


def test_model_checkpoint_names_files_by_epoch_and_logs_and_keeps_only_the_best(tmp_path):
    model, (x, y) = make_model(), make_data()
    weights = []
    record = LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(model.get_weights()))
    every = ModelCheckpoint(str(tmp_path / "every-{epoch:02d}-{loss:.3f}.npz"), monitor="loss")
    best = ModelCheckpoint(
        tmp_path / "best-{epoch}.npz", monitor="score", save_best_only=True, mode="max"
    )
    history = short_fit(
        model, x, y, epochs=4, callbacks=[Scripted("score", [1, 3, 2, 4]), record, every, best]
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    losses = history.history["loss"]
    every_names = [f"every-{e + 1:02d}-{losses[e]:.3f}.npz" for e in range(4)]
    assert names == sorted(["best-1.npz", "best-2.npz", "best-4.npz", *every_names])
    for epoch in range(4):
        assert_same_weights(load_model(tmp_path / every_names[epoch]).weights, weights[epoch])
    assert_same_weights(load_model(tmp_path / "best-2.npz").weights, weights[1])


def test_model_checkpoint_every_n_batches_and_a_missing_field_is_an_error(tmp_path):
    model, (x, y) = make_model(), make_data()
    saves = ModelCheckpoint(tmp_path / "batch.npz", save_freq=3)
    short_fit(model, x, y, epochs=2, callbacks=[saves])  # 8 batches: saved after 3 and 6
    assert (tmp_path / "batch.npz").exists()
    with pytest.raises(KeyError, match="filepath"):
        short_fit(model, x, y, callbacks=[ModelCheckpoint(tmp_path / "{val_loss}.npz")])


# CSVLogger


def test_csv_logger_writes_the_history_and_appends(tmp_path):
    path = tmp_path / "log.csv"
    x, y = make_data()
    history = short_fit(make_model(), x, y, callbacks=[CSVLogger(path)], validation_split=0.2)
    appended = [CSVLogger(path, append=True)]
    more = short_fit(make_model(), x, y, epochs=1, callbacks=appended, validation_split=0.2)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keys = sorted(history.history)
    assert rows[0] == ["epoch", *keys]
    for epoch in range(3):
        assert [float(v) for v in rows[1 + epoch][1:]] == [history.history[k][epoch] for k in keys]
    assert rows[4][0] == "0" and float(rows[4][1]) == more.history[keys[0]][0]
    assert len(rows) == 5


# Learning rates


def test_learning_rate_scheduler_trains_as_fits_at_those_rates():
    x, y = make_data()
    model, reference = make_model(), make_model()
    reference.set_weights(model.get_weights())
    rates = [0.1, 0.05, 0.025]
    history = short_fit(
        model, x, y, callbacks=[LearningRateScheduler(lambda epoch, rate: rates[epoch])]
    )
    assert history.history["learning_rate"] == rates
    optimizer = SGD(0.1)
    for epoch, rate in enumerate(rates):
        optimizer.learning_rate = rate
        fit(reference, x, y, epoch + 1, BATCH, optimizer=optimizer, verbose=0, initial_epoch=epoch)
    assert_same_weights(model.weights, reference.weights)


def test_reduce_lr_on_plateau_waits_patience_then_cools_down_and_stops_at_min_lr():
    model, (x, y) = make_model(), make_data()
    reduce = ReduceLROnPlateau(
        monitor="score", factor=0.5, patience=1, cooldown=2, min_lr=0.02, min_delta=0.0
    )
    history = short_fit(
        model, x, y, epochs=7, optimizer=SGD(0.1), callbacks=[Scripted("score", [5] * 7), reduce]
    )
    # Epoch 0 sets the best; 1 waits out its patience: reduced; 2 cools down; 3 reduced; ...
    # (Keras' order: the cooldown counts down before the patience counts up)
    assert history.history["learning_rate"] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02]


def test_terminate_on_nan_returns_the_history_with_the_last_finite_weights():
    model, (x, y) = make_model(), make_data()
    reference = make_model()
    reference.set_weights(model.get_weights())
    x = x.copy()
    x[2 * BATCH] = np.inf  # the third batch's loss
    with pytest.raises(FloatingPointError, match="epoch 0, batch 2"):
        short_fit(make_model(), x, y)
    history = short_fit(model, x, y, callbacks=[TerminateOnNaN()])
    assert history.epoch == [0] and not np.isfinite(history.history["loss"][0])
    short_fit(reference, x[: 2 * BATCH], y[: 2 * BATCH], epochs=1)
    assert_same_weights(model.weights, reference.weights)


# BackupAndRestore

TRAINER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from helpers import make_data, make_model
    from fastnaive import Adam, fit
    from fastnaive.callbacks import BackupAndRestore, LambdaCallback
    backup, out, epochs, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    x, y = make_data(400)
    model = make_model()
    model.set_weights([np.full_like(w, 0.01 * (i + 1)) for i, w in enumerate(model.weights)])
    def slow(epoch, logs):
        print("epoch", epoch, flush=True)
        import time; time.sleep(pause)
    callbacks = [LambdaCallback(on_epoch_end=slow)]
    if backup != "-":
        callbacks.append(BackupAndRestore(backup))
    history = fit(model, x, y, epochs, 16, optimizer=Adam(1e-2), shuffle=True, seed=3,
                  verbose=0, validation_split=0.25, callbacks=callbacks)
    np.savez(out, *model.weights)
    with open(out + ".json", "w") as f:
        json.dump({{"epoch": history.epoch, "history": history.history}}, f)
    """
)


def run_trainer(tmp_path, backup, out, epochs=6, pause=0.0):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER.format(tests=os.path.dirname(__file__)))
    return subprocess.Popen(
        [sys.executable, str(script), backup, str(out), str(epochs), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_killed_fit_resumes_from_its_backup_to_the_weights_and_history_of_one_run(tmp_path):
    backup = tmp_path / "backup"
    whole = run_trainer(tmp_path, "-", tmp_path / "whole.npz")
    killed = run_trainer(tmp_path, str(backup), tmp_path / "never.npz", pause=0.5)
    for line in killed.stdout:
        if line.startswith("epoch 2"):  # epochs 0 and 1 are backed up; 2 is on its way
            time.sleep(0.2)
            killed.send_signal(signal.SIGKILL)
            break
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert whole.wait(timeout=120) == 0
    assert (backup / "state.npz").exists()
    resumed = run_trainer(tmp_path, str(backup), tmp_path / "resumed.npz")
    lines = resumed.stdout.read().split("\n")
    assert resumed.wait(timeout=120) == 0
    assert lines[0] in ("epoch 2", "epoch 3")  # it started after its last backup
    with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert_same_weights([b[k] for k in b.files], [a[k] for k in a.files])
    assert json.loads((tmp_path / "resumed.npz.json").read_text()) == json.loads(
        (tmp_path / "whole.npz.json").read_text()
    )
    assert not (backup / "state.npz").exists()  # removed once training ended


def test_backup_and_restore_after_a_crash_in_process(tmp_path):
    x, y = make_data()
    initial = make_model().get_weights()

    def train(callbacks):
        model = make_model()
        model.set_weights(initial)
        history = short_fit(
            model, x, y, epochs=4, optimizer=Adam(1e-2), shuffle=True, seed=1, callbacks=callbacks
        )
        return model, history

    def crash(epoch, logs):
        if epoch == 1:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        train([BackupAndRestore(tmp_path), LambdaCallback(on_epoch_end=crash)])
    resumed, history = train([BackupAndRestore(tmp_path, delete_checkpoint=False)])
    whole, whole_history = train([])
    assert_same_weights(resumed.weights, whole.weights)
    assert history.epoch == whole_history.epoch and history.history == whole_history.history
    assert (tmp_path / "state.npz").exists()
    with pytest.raises(ValueError, match="checkpoint_dir or a BackupAndRestore"):
        backup = BackupAndRestore(tmp_path)
        short_fit(make_model(), x, y, checkpoint_dir=tmp_path, callbacks=[backup])


# Ctrl-C

INTERRUPTED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from helpers import make_data, make_model
    from fastnaive import SGD, fit
    from fastnaive.callbacks import LambdaCallback
    from fastnaive.training import TrainingInterrupted
    x, y = make_data(2000)
    model = make_model()
    np.savez(sys.argv[1] + "-initial.npz", *model.weights)
    ready = LambdaCallback(on_epoch_end=lambda epoch, logs: print("ready", flush=True))
    try:
        fit(model, x, y, 100000, 8, optimizer=SGD(0.01), verbose=0, callbacks=[ready])
    except TrainingInterrupted as error:
        np.savez(sys.argv[1] + "-final.npz", *model.weights)
        print(json.dumps({{"message": str(error), "epoch": error.epoch, "batch": error.batch,
                          "epochs": len(error.history.epoch)}}), flush=True)
        sys.exit(130)
    """
)


def test_ctrl_c_stops_at_a_step_boundary_with_one_line_and_the_history(tmp_path):
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED.format(tests=os.path.dirname(__file__)))
    base = str(tmp_path / "weights")
    process = subprocess.Popen(
        [sys.executable, str(script), base],
        stdout=subprocess.PIPE,
        text=True,
        # A shell's background job inherits SIGINT ignored; the test wants Python's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for line in process.stdout:
            if line.strip() == "ready":
                time.sleep(0.05)
                process.send_signal(signal.SIGINT)
                break
        out = process.communicate(timeout=120)[0].strip().split("\n")[-1]
    finally:
        process.kill()
    assert process.returncode == 130
    report = json.loads(out)
    steps = 2000 // 8
    assert report["message"] == (
        f"interrupted at epoch {report['epoch'] + 1}/100000, batch {report['batch'] + 1}/"
        f"{steps}: the model holds the weights after that batch"
    )
    assert report["epochs"] == report["epoch"] >= 1  # the History of the complete epochs
    # The weights are those of exactly that many steps, replayed here.
    x, y = make_data(2000)
    model = make_model()
    with np.load(base + "-initial.npz") as initial:
        model.set_weights([initial[k] for k in initial.files])
    n_steps = report["epoch"] * steps + report["batch"] + 1
    optimizer = SGD(0.01)
    for epoch in range(report["epoch"] + 1):
        n = min(steps, n_steps - epoch * steps) * 8
        if n:
            fit(model, x[:n], y[:n], 1, 8, optimizer=optimizer, verbose=0)
    with np.load(base + "-final.npz") as final:
        assert_same_weights(model.weights, [final[k] for k in final.files])
