"""What `fit` prints, by `verbose`: the book's lines, a progress bar, or a line per epoch."""

import sys
import time

from fastnaive.callbacks import Callback

__all__ = ["logger"]


def _metrics(logs):
    return " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


class BookLogger(Callback):
    """The book's output: "Epoch N", then "loss at batch K: x.xx" every 100 batches."""

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch}")

    def on_batch_end(self, batch, logs=None):
        if batch % 100 == 0:
            print(f"loss at batch {batch}: {logs['loss']:.2f}")


class EpochLogger(Callback):
    """One line per epoch: its time and metrics."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        print(f"Epoch {epoch + 1}/{self.params['epochs']} - {seconds:.2f}s - {_metrics(logs)}")


class ProgressBar(Callback):
    """A tqdm bar per epoch: samples done, samples/s, ETA and the running mean loss."""

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=self.params["samples"],
            unit="samples",
            unit_scale=True,
            desc=f"Epoch {epoch + 1}/{self.params['epochs']}",
            file=sys.stdout,
            dynamic_ncols=True,
            leave=True,
        )
        self.total, self.count, self.batch_size = 0.0, 0, self.params["batch_size"]

    def on_batch_end(self, batch, logs=None):
        n = min(self.batch_size, self.params["samples"] - batch * self.batch_size)
        self.total += logs["loss"] * n
        self.count += n
        self.bar.update(n)
        if batch % 20 == 0:
            self.bar.set_postfix(loss=f"{self.total / self.count:.4f}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.set_postfix_str(_metrics(logs), refresh=False)
        self.bar.close()


_LOGGERS = {"book": BookLogger, 1: ProgressBar, 2: EpochLogger}


def logger(verbose):
    """Return the callback printing for `verbose` ("book", 0, 1 or 2), or None for 0."""
    if verbose == 0 and not isinstance(verbose, bool):
        return None
    if isinstance(verbose, bool) or verbose not in _LOGGERS:
        raise ValueError(f"Expected verbose 'book', 0, 1 or 2. Received: verbose={verbose!r}")
    return _LOGGERS[verbose]()
