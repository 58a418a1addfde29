"""Hooks that `fit` calls as training goes, with Keras 3's names and logs.

`fit` gives each callback the model (`callback.model`, whose `optimizer` is the one training
it) and the run's settings (`callback.params`: epochs, steps, samples, batch_size, ...)
before training. Epochs and batches are counted from 0. The logs:
- on_train_batch_end(batch, logs): "loss" and, for a classification loss, "accuracy": the
  running means over the epoch so far, as Keras' are; "batch_loss" is that batch's own loss;
- on_epoch_end(epoch, logs): the epoch's "loss" and "accuracy" (and "val_loss",
  "val_accuracy" when validating), and "learning_rate" when a LearningRateScheduler or
  ReduceLROnPlateau runs (it records the rate the epoch ran at);
- on_train_end(logs): the last epoch's logs.
Setting `model.stop_training = True` ends training after the current batch (the epoch's
validation and on_epoch_end still run), as in Keras 3.
"""

import csv
import inspect
import math
import numbers
import os
import string
import sys
import warnings

import numpy as np

from fastnaive._validation import path as checked_path

__all__ = [
    "Callback",
    "LambdaCallback",
    "History",
    "EarlyStopping",
    "ModelCheckpoint",
    "BackupAndRestore",
    "CSVLogger",
    "LearningRateScheduler",
    "ReduceLROnPlateau",
    "TerminateOnNaN",
]

HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_batch_begin",
    "on_batch_end",
)


class Callback:
    """Override any of the hooks. on_train_batch_begin/end call on_batch_begin/end, as
    Keras' do, so a callback written for either name works.

    `writes_weights` says whether a hook may write the model's weights in place while
    training goes on: True unless a callback declares otherwise, as fastnaive's own do. fit
    then measures them again for its overflow guard after each epoch's hooks, and after each
    batch's if the callback has a batch hook of its own (writes_between_batches); that
    measure reads every weight, so a callback that only reads declares False.
    """

    model = None
    params = None
    writes_weights = True

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass


BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


def has_batch_hooks(callback):
    """Whether one of `callback`'s batch hooks is not Callback's no-op (a callback of another
    kind counts as one that has): fit calls the batch hooks of those alone."""
    for name in BATCH_HOOKS:
        hook = getattr(callback, name, None)
        if getattr(hook, "__func__", hook) is not getattr(Callback, name):
            return True
    return False


def writes_between_batches(callback):
    """Whether `callback` may write the model's weights between two batches of an epoch: it
    does not declare writes_weights False and has batch hooks (has_batch_hooks)."""
    return bool(getattr(callback, "writes_weights", True)) and has_batch_hooks(callback)


class LambdaCallback(Callback):
    """A callback of plain functions, e.g. LambdaCallback(on_epoch_end=lambda epoch, logs: ...).

    Every hook of Callback can be given by name (on_train_batch_end, on_batch_end, ...).
    """

    def __init__(self, **hooks):
        for name, function in hooks.items():
            if name not in HOOKS:
                raise TypeError(
                    f"Expected hooks among {', '.join(HOOKS)}. Received: {name}={function!r}"
                )
            if function is not None:
                if not callable(function):
                    raise TypeError(f"Expected {name} to be callable. Received: {function!r}")
                setattr(self, name, function)


class History(Callback):
    """Records each epoch's logs: `history["loss"][epoch]`, ...; `fit` returns it."""

    writes_weights = False

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


def _count(value, name, minimum=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Expected {name} to be an integer >= {minimum}. Received: {value!r}")
    return int(value)


def _real(value, name, minimum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"Expected {name} to be a real number. Received: {name}={value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"Expected {name} >= {minimum}. Received: {name}={value!r}")
    return float(value)


class _Monitor:
    """A logged quantity to minimise or maximise, and whether a value improves on the best."""

    def __init__(self, monitor, mode, min_delta, owner):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"Expected mode 'auto', 'min' or 'max'. Received: mode={mode!r}")
        if not isinstance(monitor, str):
            raise TypeError(f"Expected monitor to be a str. Received: monitor={monitor!r}")
        self.name, self.owner = monitor, owner
        self.min_delta = _real(min_delta, "min_delta", 0.0)
        self.minimise = mode == "min" or (
            mode == "auto" and "acc" not in monitor and "auc" not in monitor
        )

    def worst(self):
        return math.inf if self.minimise else -math.inf

    def improves(self, value, best):
        if self.minimise:
            return value < best - self.min_delta
        return value > best + self.min_delta

    def read(self, logs):
        """The monitored value in logs, or None with a warning (as Keras does)."""
        value = (logs or {}).get(self.name)
        if value is None:
            warnings.warn(
                f"{self.owner} is conditioned on {self.name!r}, which is not among the logged "
                f"values {sorted(logs or {})}; it does nothing this epoch.",
                RuntimeWarning,
                stacklevel=3,
            )
        return value


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than min_delta for `patience` epochs.

    mode "auto" maximises quantities named like an accuracy or AUC and minimises the rest.
    Patience starts again only once the monitor beats `baseline` (when given) and the best so
    far; epochs before `start_from_epoch` are not looked at. With
    restore_best_weights, the weights of the best epoch are put back at the end of
    training. A monitor that is not logged (val_loss without validation data) gets a warning
    and no stop, as in Keras.
    """

    writes_weights = False

    def __init__(
        self,
        monitor="val_loss",
        min_delta=0.0,
        patience=0,
        verbose=0,
        mode="auto",
        baseline=None,
        restore_best_weights=False,
        start_from_epoch=0,
    ):
        self.monitor = _Monitor(monitor, mode, min_delta, "EarlyStopping")
        self.patience = _count(patience, "patience")
        self.verbose = verbose
        self.baseline = None if baseline is None else _real(baseline, "baseline")
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = _count(start_from_epoch, "start_from_epoch")
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.best = self.monitor.worst()
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        value = self.monitor.read(logs)
        if value is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # The first epoch looked at is the best so far if nothing beats it.
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self.monitor.improves(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Patience starts again only past both the baseline and the previous best.
            if self.baseline is None or self.monitor.improves(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch is not None and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring the weights of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (fastnaive's .npz, atomically) after every epoch, or every `save_freq`
    batches, to `filepath`, which may name the epoch and logged values:
    "model-{epoch:02d}-{val_loss:.3f}.npz" (epoch counted from 1, as Keras names it).

    With save_best_only, only when `monitor` improves on the best so far (or on
    `initial_value_threshold`). A fastnaive model file always holds the architecture and the
    weights: save_weights_only is accepted and writes the same file.
    """

    writes_weights = False

    def __init__(
        self,
        filepath,
        monitor="val_loss",
        verbose=0,
        save_best_only=False,
        save_weights_only=False,
        mode="auto",
        save_freq="epoch",
        initial_value_threshold=None,
    ):
        self.filepath = os.fspath(checked_path(filepath, "filepath"))
        self.monitor = _Monitor(monitor, mode, 0.0, "ModelCheckpoint")
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        if save_freq != "epoch":
            save_freq = _count(save_freq, "save_freq", minimum=1)
        self.save_freq = save_freq
        self.best = (
            self.monitor.worst()
            if initial_value_threshold is None
            else _real(initial_value_threshold, "initial_value_threshold")
        )
        names = {field for _, field, _, _ in string.Formatter().parse(self.filepath) if field}
        self.fields = {name.split(".")[0].split("[")[0] for name in names}
        self.batches_seen = 0
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self.batches_seen += 1
        if self.batches_seen % self.save_freq == 0:
            self._save(self.epoch, logs, f"batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, logs, f"epoch {epoch + 1}")

    def _save(self, epoch, logs, when):
        logs = dict(logs or {})
        missing = self.fields - set(logs) - {"epoch", "batch"}
        if missing:
            raise KeyError(
                f"Expected the fields of ModelCheckpoint's filepath among the logged values "
                f"{sorted(logs)} and epoch. Received: filepath={self.filepath!r}"
            )
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.save_best_only:
            value = self.monitor.read(logs)
            if value is None:
                return
            if not self.monitor.improves(value, self.best):
                if self.verbose:
                    print(f"{when}: {self.monitor.name} did not improve from {self.best:.5f}")
                return
            if self.verbose:
                print(
                    f"{when}: {self.monitor.name} improved from {self.best:.5f} to "
                    f"{value:.5f}, saving model to {path}"
                )
            self.best = value
        elif self.verbose:
            print(f"{when}: saving model to {path}")
        self.model.save(path)


class BackupAndRestore(Callback):
    """Back up the training run into `backup_dir` after every epoch, and resume from there.

    A fit that is killed, crashes or is interrupted leaves its last backup (the model, the
    optimizer's state, the shuffling seed and the History so far); the same fit run again
    with the same callback resumes from it and ends with the weights and History an
    uninterrupted run would have. A fit that ends normally removes the backup unless
    delete_checkpoint=False. fit does the work (fastnaive.checkpoints); this object names
    the folder.
    """

    writes_weights = False

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        self.backup_dir = os.fspath(checked_path(backup_dir, "backup_dir"))
        if save_freq != "epoch":
            raise ValueError(
                f"Expected save_freq='epoch' (backups are taken after every epoch). "
                f"Received: save_freq={save_freq!r}"
            )
        self.delete_checkpoint = bool(delete_checkpoint)


class CSVLogger(Callback):
    """Write each epoch's logs as a row of `filename`: "epoch" then the logged keys, sorted.

    append=True continues an existing file (its header kept).
    """

    writes_weights = False

    def __init__(self, filename, separator=",", append=False):
        self.filename = os.fspath(checked_path(filename, "filename"))
        if not (isinstance(separator, str) and len(separator) == 1):
            raise ValueError(
                f"Expected separator to be one character. Received: separator={separator!r}"
            )
        self.separator = separator
        self.append = bool(append)
        self.keys = self.file = self.writer = None

    def on_train_begin(self, logs=None):
        exists = self.append and os.path.exists(self.filename)
        if exists:
            with open(self.filename, newline="") as f:
                header = f.readline().strip()
            self.keys = header.split(self.separator)[1:] if header else None
        self.file = open(self.filename, "a" if self.append else "w", newline="")
        self.writer = csv.writer(self.file, delimiter=self.separator)
        self.write_header = not (exists and self.keys)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if self.write_header:
            self.writer.writerow(["epoch", *self.keys])
            self.write_header = False
        self.writer.writerow([epoch, *(logs.get(key, "NA") for key in self.keys)])
        self.file.flush()

    def on_train_end(self, logs=None):
        if self.file is not None:
            self.file.close()
            self.file = None


def _optimizer(callback):
    optimizer = getattr(callback.model, "optimizer", None)
    if optimizer is None or not hasattr(optimizer, "learning_rate"):
        raise TypeError(
            f"Expected {type(callback).__name__} in a fit whose optimizer has a "
            f"learning_rate. Received: optimizer={optimizer!r}"
        )
    return optimizer


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of every epoch to schedule(epoch, lr) (or
    schedule(epoch) for a function of one argument)."""

    writes_weights = False

    def __init__(self, schedule, verbose=0):
        if not callable(schedule):
            raise TypeError(f"Expected schedule to be callable. Received: {schedule!r}")
        self.schedule, self.verbose = schedule, verbose
        try:
            n_args = len(inspect.signature(schedule).parameters)
        except (TypeError, ValueError):
            n_args = 2
        self.takes_rate = n_args >= 2

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = _optimizer(self)
        rate = optimizer.learning_rate
        rate = self.schedule(epoch, rate) if self.takes_rate else self.schedule(epoch)
        if isinstance(rate, (np.ndarray, np.generic)):
            rate = rate.item()
        optimizer.learning_rate = rate
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {rate}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(_optimizer(self).learning_rate)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` when `monitor` has not improved by more than
    min_delta for `patience` epochs; then wait `cooldown` epochs; never below min_lr."""

    writes_weights = False

    def __init__(
        self,
        monitor="val_loss",
        factor=0.1,
        patience=10,
        verbose=0,
        mode="auto",
        min_delta=1e-4,
        cooldown=0,
        min_lr=0.0,
    ):
        self.factor = _real(factor, "factor", 0.0)
        if not self.factor < 1.0:
            raise ValueError(f"Expected factor in [0, 1). Received: factor={factor!r}")
        self.monitor = _Monitor(monitor, mode, min_delta, "ReduceLROnPlateau")
        self.patience = _count(patience, "patience")
        self.cooldown = _count(cooldown, "cooldown")
        self.min_lr = _real(min_lr, "min_lr", 0.0)
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = self.monitor.worst(), 0, 0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(_optimizer(self).learning_rate)
        value = self.monitor.read(logs)
        if value is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.monitor.improves(value, self.best):
            self.best, self.wait = value, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                optimizer = _optimizer(self)
                old = optimizer.learning_rate
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    optimizer.learning_rate = new
                    if self.verbose:
                        print(
                            f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}."
                        )
                    self.cooldown_counter, self.wait = self.cooldown, 0


class TerminateOnNaN(Callback):
    """Stop training when a batch's loss is NaN or infinite: fit returns its History (the
    weights are those of the last finite step) instead of raising FloatingPointError."""

    writes_weights = False

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("batch_loss", (logs or {}).get("loss"))
        if loss is not None and not math.isfinite(loss):
            print(f"Batch {batch}: invalid loss, terminating training", file=sys.stderr)
            self.model.stop_training = True
