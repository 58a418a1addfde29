"""What `fit` prints, by `verbose`: the book's lines, a progress bar, or a line per epoch.

"auto", as in Keras, is the progress bar where it can be redrawn (a terminal, or a notebook
through tqdm.auto's widgets) and a line per epoch elsewhere (a pipe, a log file). Lines are
flushed as they are printed, so a pipe shows training as it goes. The bar keeps to the
terminal's width: a compact running loss and accuracy while the epoch runs, then the
epoch's metrics on a line of their own, never cut.
"""

import sys
import time
import weakref

from fastnaive.callbacks import Callback

__all__ = ["logger", "close_bars"]

# The bar: "Epoch 3/10  45%|████▌     | 211/469 [00:01<00:01, loss 0.3044 - acc 0.9123]".
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
# Width of the bar printed once per epoch where it cannot be redrawn.
STATIC_COLUMNS = 80
# The bars drawn and not yet closed: an epoch that training left (Ctrl-C, an error).
_OPEN_BARS = weakref.WeakSet()


def _metrics(logs):
    return " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


def _redrawn():
    """Whether stdout shows a bar redrawn in place: a terminal, or a notebook's widgets."""
    from tqdm.auto import tqdm

    if any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__):
        return True
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def close_bars():
    """End the line of every progress bar still open: training stopped within an epoch."""
    for bar in list(_OPEN_BARS):
        bar.close()
    sys.stdout.flush()


class BookLogger(Callback):
    """The book's output as it trains: "Epoch N" (from 0), then "loss at batch K: x.xx" every
    100 batches, that batch's own loss (logs["batch_loss"]; "loss" is the epoch's mean)."""

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch}", flush=True)

    def on_batch_end(self, batch, logs=None):
        if batch % 100 == 0:
            print(f"loss at batch {batch}: {logs['batch_loss']:.2f}", flush=True)


class EpochLogger(Callback):
    """One line per epoch: its time and metrics."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        line = f"Epoch {epoch + 1}/{self.params['epochs']} - {seconds:.2f}s - {_metrics(logs)}"
        print(line, flush=True)


class ProgressBar(Callback):
    """A bar per epoch (tqdm.auto): batches done, time, the running loss and accuracy; then the
    epoch's metrics on their own line. Where the bar cannot be redrawn, it is printed once,
    complete, at the end of each epoch."""

    def __init__(self):
        self.redrawn = _redrawn()
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        from tqdm.auto import tqdm

        self.desc = f"Epoch {epoch + 1}/{self.params['epochs']}"
        self.start = time.perf_counter()
        if self.redrawn:
            self.bar = tqdm(
                total=self.params["steps"],
                desc=self.desc,
                bar_format=BAR_FORMAT,
                file=sys.stdout,
                dynamic_ncols=True,
                leave=True,
            )
            _OPEN_BARS.add(self.bar)

    def on_batch_end(self, batch, logs=None):
        if self.bar is not None:
            logs = logs or {}
            compact = [f"{key} {logs[key]:.4f}" for key in ("loss", "accuracy") if key in logs]
            self.bar.set_postfix_str(" - ".join(compact).replace("accuracy", "acc"), refresh=False)
            self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.set_postfix_str("", refresh=False)
            self._close()
        else:
            from tqdm.std import tqdm

            steps, seconds = self.params["steps"], time.perf_counter() - self.start
            line = tqdm.format_meter(
                steps, steps, seconds, STATIC_COLUMNS, prefix=self.desc, bar_format=BAR_FORMAT
            )
            print(line, flush=True)
        print(_metrics(logs or {}), flush=True)

    def on_train_end(self, logs=None):
        self._close()

    def _close(self):
        """End the bar's line, if one is open."""
        if self.bar is not None:
            self.bar.close()
            _OPEN_BARS.discard(self.bar)
            self.bar = None
            sys.stdout.flush()


_LOGGERS = {"book": BookLogger, 1: ProgressBar, 2: EpochLogger}


def prints(verbose):
    """True when `verbose` ("auto", "book", 0, 1 or 2; checked) asks for output."""
    logger(verbose)
    return verbose != 0


def logger(verbose):
    """Return the callback printing for `verbose`, or None for 0: "auto" (1 where a bar can be
    redrawn, else 2), "book", 0, 1 or 2."""
    if isinstance(verbose, bool) or verbose not in ("auto", "book", 0, 1, 2):
        raise ValueError(
            f"Expected verbose 'auto', 'book', 0, 1 or 2. Received: verbose={verbose!r}"
        )
    if verbose == "auto":
        verbose = 1 if _redrawn() else 2
    return _LOGGERS[verbose]() if verbose else None
