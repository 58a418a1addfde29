"""Hooks that `fit` calls as training goes, in the manner of Keras callbacks."""

__all__ = ["Callback", "LambdaCallback"]


class Callback:
    """Override any of the hooks; `logs` holds the step's or epoch's mean "loss"."""

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
    """A callback made of plain functions, e.g. LambdaCallback(on_batch_end=lambda b, logs: ...)."""

    def __init__(self, on_train_begin=None, on_epoch_begin=None, on_batch_end=None,
                 on_epoch_end=None, on_train_end=None):
        given = {"on_train_begin": on_train_begin, "on_epoch_begin": on_epoch_begin,
                 "on_batch_end": on_batch_end, "on_epoch_end": on_epoch_end,
                 "on_train_end": on_train_end}
        for name, function in given.items():
            if function is not None:
                if not callable(function):
                    raise TypeError(f"Expected {name} to be callable. Received: {function!r}")
                setattr(self, name, function)
