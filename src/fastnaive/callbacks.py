"""Hooks that `fit` calls as training goes, in the manner of Keras callbacks.

`fit` gives each callback the model (`callback.model`) and the run's settings
(`callback.params`) before training. `logs` holds "loss" after a batch, and
the epoch's "loss", "accuracy" (and "val_loss", "val_accuracy" when
validating) after an epoch. Setting `model.stop_training = True` ends training
after the current epoch.
"""

import math
import numbers

__all__ = ["Callback", "LambdaCallback", "History", "EarlyStopping"]


class Callback:
    """Override any of the hooks."""

    model = None
    params = None

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass


class LambdaCallback(Callback):
    """A callback of plain functions, e.g. LambdaCallback(on_epoch_end=lambda epoch, logs: ...)."""

    def __init__(
        self,
        on_train_begin=None,
        on_epoch_begin=None,
        on_batch_end=None,
        on_epoch_end=None,
        on_train_end=None,
    ):
        given = {
            "on_train_begin": on_train_begin,
            "on_epoch_begin": on_epoch_begin,
            "on_batch_end": on_batch_end,
            "on_epoch_end": on_epoch_end,
            "on_train_end": on_train_end,
        }
        for name, function in given.items():
            if function is not None:
                if not callable(function):
                    raise TypeError(f"Expected {name} to be callable. Received: {function!r}")
                setattr(self, name, function)


class History(Callback):
    """Records each epoch's logs: `history["loss"][epoch]`, ...; `fit` returns it."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than min_delta for `patience` epochs.

    mode "auto" minimises quantities named like a loss and maximises the rest.
    With restore_best_weights, the weights of the best epoch are put back at
    the end of training.
    """

    def __init__(
        self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto", restore_best_weights=False
    ):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"Expected mode 'auto', 'min' or 'max'. Received: mode={mode!r}")
        if (
            isinstance(patience, bool)
            or not isinstance(patience, numbers.Integral)
            or not patience >= 0
        ):
            raise ValueError(f"Expected patience to be an integer >= 0. Received: {patience!r}")
        if isinstance(min_delta, bool) or not (
            isinstance(min_delta, numbers.Real) and min_delta >= 0
        ):
            raise ValueError(f"Expected min_delta >= 0. Received: {min_delta!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.minimise = mode == "min" or (mode == "auto" and "acc" not in monitor)
        self.restore_best_weights = restore_best_weights
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.minimise else -math.inf
        self.best_epoch = None
        self.best_weights = None
        self.wait = 0
        self.stopped_epoch = None

    def _improved(self, value):
        if self.minimise:
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"Expected EarlyStopping's monitor among the logged values "
                f"{sorted(logs)}. Received: monitor={self.monitor!r}"
            )
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
