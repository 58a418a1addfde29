"""The book's training functions: gradients, weight updates, one step, fit and evaluate."""

import contextlib
import math
import numbers
import operator
import signal
import threading
import weakref

import numpy as np

from fastnaive import (
    _kernels,
    checkpoints,
    distributed,
    engine,
    keras_optimizers,
    optimizers,
    progress,
)
from fastnaive._validation import as_labels, positive_int
from fastnaive._validation import path as checked_path
from fastnaive._validation import seed as checked_seed
from fastnaive.callbacks import (
    BackupAndRestore,
    Callback,
    History,
    has_batch_hooks,
    writes_between_batches,
)
from fastnaive.network import Network
from fastnaive.optimizers import SGD
from fastnaive.sparse import as_model_inputs

__all__ = [
    "loss_and_gradients",
    "update_weights",
    "one_training_step",
    "fit",
    "evaluate",
    "evaluate_loss",
    "checked_optimizer",
    "TrainingInterrupted",
]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped fit at a step boundary.

    `epoch` and `batch` index the last complete step (batch -1: none of that epoch), which
    the model's weights hold; `history` is the History of the epochs completed before it.
    """

    def __init__(self, epoch, batch, history, epochs, steps):
        super().__init__(
            f"interrupted at epoch {epoch + 1}/{epochs}, batch {batch + 1}/{steps}: the "
            f"model holds the weights after that batch"
        )
        self.epoch, self.batch, self.history = epoch, batch, history


# The weights each model last passed _checked_model with: the same arrays, of the same
# shapes (check_weights), overlap as they did then, so the pairwise check is not repeated.
_checked_weights = weakref.WeakKeyDictionary()


def _checked_model(model):
    if not isinstance(model, Network):
        raise TypeError(f"Expected model to be a NaiveSequential. Received: {type(model).__name__}")
    weights = model.check_weights()
    known = _checked_weights.get(model)
    if known is not None and all(map(operator.is_, known, weights)):
        return model
    for i in range(1, len(weights)):
        j = _kernels.first_overlap(weights[i], weights[:i])
        if j >= 0:
            raise ValueError(
                f"Expected each weight of the model in its own array. "
                f"Received: model.weights[{i}] overlapping model.weights[{j}]"
            )
    _checked_weights[model] = weights
    return model


def _unaliased(array, weights):
    """`array` (or None), or a copy of it if it overlaps one of `weights`, the model's (which
    training writes in place): aliased inputs give the answer of copies."""
    if array is not None and _kernels.first_overlap(array, weights) >= 0:
        return array.copy()
    return array


def _checked_batch(model, images, labels, names=("images", "labels")):
    x = as_model_inputs(images, model.input_size, model.dtype, name=names[0])
    y = model.loss.targets(labels, x.shape[0], model.output_size, model.dtype, name=names[1])
    weights = model.weights
    if isinstance(x, np.ndarray):  # a scipy.sparse matrix's arrays are fresh copies
        x = _unaliased(x, weights)
    return x, _unaliased(y, weights)


def _checked_sample_weight(sample_weight, class_weight, y, model):
    """Return the per-sample weights (None: all ones) from sample_weight and class_weight."""
    weights = None
    if sample_weight is not None:
        weights = np.asarray(sample_weight)
        if weights.dtype.kind not in "biuf" or weights.shape != (y.shape[0],):
            raise ValueError(
                f"Expected sample_weight of {y.shape[0]} real numbers, one per "
                f"sample. Received: shape {weights.shape}, dtype {weights.dtype}"
            )
        weights = np.ascontiguousarray(weights, dtype=model.dtype)
        if not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError(
                "Expected sample_weight finite and >= 0. "
                f"Received: values in [{weights.min()}, {weights.max()}]"
            )
    if class_weight is not None:
        if not isinstance(class_weight, dict):
            raise TypeError(
                f"Expected class_weight to be a dict {{class: weight}}. "
                f"Received: {type(class_weight).__name__}"
            )
        if model.loss.metric is None:
            raise ValueError(
                f"Expected class_weight only with a classification loss. "
                f"Received: loss={model.loss.name!r}"
            )
        n_classes = max(model.output_size, 2)
        table = np.ones(n_classes, model.dtype)
        for key, value in class_weight.items():
            if not (isinstance(key, (int, np.integer)) and 0 <= key < n_classes) or not (
                isinstance(value, (int, float, np.integer, np.floating)) and value >= 0
            ):
                raise ValueError(
                    f"Expected class_weight keys in [0, {n_classes}) and weights "
                    f">= 0. Received: {key!r}: {value!r}"
                )
            table[key] = value
        classes = (
            y
            if y.ndim == 1
            else (np.argmax(y, axis=1) if y.shape[1] > 1 else (y[:, 0] > 0.5).astype(np.intp))
        )
        by_class = table[classes]
        weights = by_class if weights is None else weights * by_class
    return weights


# one_training_step's default optimizer for each model.
_book_optimizers = weakref.WeakKeyDictionary()


def checked_optimizer(optimizer, allow_name=True):
    """The optimizer to train with: None is the book's SGD(1e-3); a name (any case) makes a
    new one; Keras' SGD and Adam are translated; anything else needs apply_gradients."""
    if optimizer is None:
        return SGD()
    if isinstance(optimizer, optimizers.Optimizer):
        return optimizer
    if isinstance(optimizer, str) and allow_name:
        return optimizers.get(optimizer)
    if isinstance(optimizer, type):
        raise TypeError(
            f"Expected an optimizer object such as fastnaive.SGD(), not a class. "
            f"Received: optimizer={optimizer.__name__} (call it: {optimizer.__name__}())"
        )
    packages = {cls.__module__.split(".")[0] for cls in type(optimizer).__mro__}
    if packages & {"keras", "tensorflow", "tf_keras"}:
        # Keras' SGD and Adam, with their settings, or a TypeError naming what is supported.
        return keras_optimizers.optimizer_from_keras(optimizer)
    if not callable(getattr(optimizer, "apply_gradients", None)):
        raise TypeError(
            f"Expected optimizer with an apply_gradients method, such as "
            f"fastnaive.SGD. Received: {optimizer!r}"
        )
    return optimizer


def loss_and_gradients(model, images_batch, labels_batch, *, sample_weight=None):
    """Return (mean loss, [dW0, db0, dW1, db1, ...]) for the batch.

    The GradientTape step of the book: the loss of a softmax last layer is the
    cross-entropy of its probabilities; any other last layer's outputs are
    taken as logits. The loss is the model's (sparse categorical cross-entropy
    by default), weighted by sample_weight as Keras does, plus the L2 penalties;
    dropout is on, as in a training step. The gradients are new arrays, in
    `model.weights` order.
    """
    _checked_model(model)
    x, y = _checked_batch(model, images_batch, labels_batch)
    w = _checked_sample_weight(sample_weight, None, y, model)
    step = engine.step_for(model, x)
    with step.threads():
        loss = step.compute_gradients(x, y, w)
    return loss, [g.copy() for g in step.gradients]


def update_weights(gradients, weights, learning_rate=1e-3):
    """w := w - learning_rate * g for each pair, in place."""
    gradients, weights = list(gradients), list(weights)
    if len(gradients) != len(weights):
        raise ValueError(
            f"Expected one gradient per weight. Received: {len(gradients)} "
            f"gradients for {len(weights)} weights"
        )
    SGD(learning_rate).apply_gradients(zip(gradients, weights))


def one_training_step(model, images_batch, labels_batch, *, optimizer=None):
    """Compute the batch's loss and gradients, update the weights; return the loss as a float.

    A non-finite loss leaves the weights as they were; an update that would leave a
    non-finite weight is undone and raises FloatingPointError. The update is all or nothing:
    an exception from a signal handler (KeyboardInterrupt) leaves the weights before it or
    after it.
    """
    _checked_model(model)
    x, y = _checked_batch(model, images_batch, labels_batch)
    step = engine.step_for(model, x)
    if optimizer is None:
        # The book's update_weights: one SGD(1e-3) per model, bound once.
        optimizer = _book_optimizers.get(model)
        if optimizer is None:
            optimizer = _book_optimizers[model] = SGD()
    step.use_optimizer(checked_optimizer(optimizer, allow_name=False))
    step.weights_changed()  # the caller may have written them since the last call
    with step.threads():
        loss, _ = step.train(x, y)
    return float(loss)


def _checked_callbacks(callbacks):
    """A list of Callbacks (one callback alone is a list of one)."""
    if isinstance(callbacks, Callback):
        return [callbacks]
    callbacks = list(callbacks or [])
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            hint = ""
            if type(callback).__module__.split(".")[0] in ("keras", "tensorflow", "tf_keras"):
                hint = (
                    " (fastnaive.callbacks has the same callbacks; fastnaive.keras.fit runs "
                    "Keras' own on a Keras model)"
                )
            raise TypeError(
                f"Expected callbacks of type fastnaive.callbacks.Callback{hint}. "
                f"Received: callbacks[{i}]={callback!r}"
            )
    if sum(isinstance(c, BackupAndRestore) for c in callbacks) > 1:
        raise ValueError("Expected at most one BackupAndRestore. Received: several")
    return callbacks


def _split(model, x, y, weights, validation_data, validation_split):
    """Return (x, y, weights, validation (x, y, weights) or None), a split taken from the end
    of the data."""
    if validation_data is not None and validation_split:
        raise ValueError(
            "Expected validation_data or validation_split, not both. "
            f"Received: validation_split={validation_split!r} and validation_data"
        )
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
            raise ValueError(
                "Expected validation_data=(images, labels) or (images, labels, sample_weight). "
                f"Received: {type(validation_data).__name__}"
            )
        x_val, y_val = _checked_batch(
            model, *validation_data[:2], names=("validation_data[0]", "validation_data[1]")
        )
        w_val = validation_data[2] if len(validation_data) == 3 else None
        w_val = _unaliased(_checked_sample_weight(w_val, None, y_val, model), model.weights)
        return x, y, weights, (x_val, y_val, w_val)
    if (
        isinstance(validation_split, (bool, np.bool_))
        or not isinstance(validation_split, numbers.Real)
        or not 0 <= validation_split < 1
    ):
        raise ValueError(f"Expected validation_split in [0, 1). Received: {validation_split!r}")
    n_val = int(x.shape[0] * validation_split)
    if validation_split and not 0 < n_val < x.shape[0]:
        raise ValueError(
            f"Expected validation_split to leave samples on both sides. "
            f"Received: validation_split={validation_split} of {x.shape[0]} samples"
        )
    if n_val == 0:
        return x, y, weights, None
    cut = x.shape[0] - n_val
    if weights is None:
        return x[:cut], y[:cut], None, (x[cut:], y[cut:], None)
    return x[:cut], y[:cut], weights[:cut], (x[cut:], y[cut:], weights[cut:])


def fit(
    model,
    images,
    labels,
    epochs,
    batch_size=128,
    *,
    optimizer=None,
    sample_weight=None,
    class_weight=None,
    shuffle=False,
    seed=None,
    validation_data=None,
    validation_split=0.0,
    verbose="book",
    callbacks=None,
    comm=None,
    checkpoint_dir=None,
    resume=False,
    overwrite=False,
    initial_epoch=0,
):
    """Train on (images, labels) in batches of batch_size; return a History.

    `optimizer` is an optimizer object or a name ("sgd", "momentum", "adam");
    None is the book's SGD(1e-3). `history.history` holds each epoch's mean
    "loss" and "accuracy" over its batches (measured before each batch's
    update) and, when validating, "val_loss" and "val_accuracy" after the
    epoch. validation_split takes the last fraction of the samples, before any
    shuffling, as Keras does. shuffle=True draws a new order every epoch from
    `seed`. verbose: "book" prints the book's lines, 1 a progress bar per epoch,
    2 a line per epoch, 0 nothing. A loss that turns NaN or infinite stops
    training with a FloatingPointError naming the epoch and batch, leaving the
    weights of the last finite step.

    `labels` are what the model's loss takes: class indices (the default,
    sparse categorical cross-entropy), or a target per output. `sample_weight`
    (one per sample) and `class_weight` ({class: weight}) weight each sample's
    loss as Keras does; "accuracy" is logged for classification losses.

    With `comm`, an mpi4py communicator, every global batch of batch_size is
    shared among its ranks (fastnaive.distributed): every rank passes the same
    arguments and data, rank 0's initial weights are broadcast, callbacks run on
    every rank with the same logs, only rank 0 prints, and an error on one rank
    aborts the job. With `checkpoint_dir`, the model and the optimizer's state
    are written there after every epoch (fastnaive.checkpoints; by rank 0);
    resume=True continues from the last checkpoint there, on any number of ranks;
    a folder that holds a checkpoint is refused unless resuming, or overwrite=True
    removes that checkpoint first. A callbacks.BackupAndRestore does the same in its folder
    when there is something to resume, and removes it when training ends. initial_epoch
    starts the epoch count there, as Keras' does (epochs is the index of the last one).

    Callbacks get Keras 3's hooks and logs (fastnaive.callbacks); `model.optimizer` is the
    optimizer while training. Ctrl-C (SIGINT, in a single process) stops training at the
    next step boundary and raises TrainingInterrupted, which holds the History so far; every
    step is all or nothing, so the model holds the weights after the last complete step.
    """
    group = distributed.group(comm)
    error = run = None
    try:
        run = _Run(
            model,
            images,
            labels,
            epochs,
            batch_size,
            optimizer,
            sample_weight,
            class_weight,
            shuffle,
            seed,
            validation_data,
            validation_split,
            verbose,
            callbacks,
            checkpoint_dir,
            resume,
            overwrite,
            initial_epoch,
        )
    except Exception as raised:
        error = raised
    group.agree(error, lambda: run.description())
    try:
        history = _fit_run(group, run)
    except BaseException as raised:
        # An error every rank raises together (is_shared) ends the job by itself; any other
        # must not leave the other ranks waiting in a collective.
        if distributed.is_shared(raised):
            group.close()  # every rank raises it, at the same point
        else:
            group.abort(raised)
        raise
    group.close()
    return history


def _fit_run(group, run):
    """fit after its arguments agree: the starting state, the plan, the epochs; the History."""
    model = run.model
    first_epoch, seed, saved_history = _starting_state(group, run)
    n_samples = run.x.shape[0]
    capacity = max(1, math.ceil(min(run.batch_size, n_samples) / group.size))
    step = engine.Step(model, capacity, run.x, optimizer=run.optimizer, reducer=group.reducer)
    history = History()
    if saved_history is not None and run.backup is not None:
        history.epoch = list(saved_history["epoch"])
        history.history = {key: list(values) for key, values in saved_history["history"].items()}
    callbacks = (run.loggers if group.is_root else []) + run.callbacks + [history]
    params = {
        "epochs": run.epochs,
        "batch_size": run.batch_size,
        "samples": n_samples,
        "steps": math.ceil(n_samples / run.batch_size),
        "shuffle": run.shuffle,
        "initial_epoch": first_epoch,
        "ranks": group.size,
        "verbose": run.verbose,
    }
    history.params = params
    history.allreduce_seconds = 0.0
    model.optimizer = run.optimizer
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params(params)
    position = _Position(first_epoch)
    with _deferred_interrupts(group.size == 1) as interrupts:
        try:
            _train_epochs(group, run, step, callbacks, first_epoch, seed, position, interrupts)
        except KeyboardInterrupt as error:
            if group.size > 1:
                raise
            history.allreduce_seconds = group.reduce_seconds
            raise TrainingInterrupted(
                position.epoch, position.batch, history, run.epochs, params["steps"]
            ) from (None if isinstance(error, _Interrupt) else error)
    history.allreduce_seconds = group.reduce_seconds
    if run.backup is not None and run.backup.delete_checkpoint and group.is_root:
        checkpoints.clear(run.checkpoint_dir)
    return history


class _Position:
    """Where training is: the epoch, and the last complete batch in it (-1: none yet)."""

    def __init__(self, epoch):
        self.epoch, self.batch = epoch, -1


class _Interrupt(KeyboardInterrupt):
    """The first Ctrl-C, noticed at a step boundary."""


@contextlib.contextmanager
def _deferred_interrupts(enabled):
    """While training, the first SIGINT sets a flag that the loop reads after each step (a
    second one raises KeyboardInterrupt at once; every step is all or nothing anyway).

    Only in the main thread, and only where SIGINT has Python's default handler; elsewhere
    KeyboardInterrupt comes as it would.
    """
    requested = [False]
    if not (
        enabled
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        yield requested
        return

    def handler(signum, frame):
        if requested[0]:
            raise KeyboardInterrupt
        requested[0] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


class _Run:
    """fit's arguments, checked and converted once."""

    def __init__(
        self,
        model,
        images,
        labels,
        epochs,
        batch_size,
        optimizer,
        sample_weight,
        class_weight,
        shuffle,
        seed,
        validation_data,
        validation_split,
        verbose,
        callbacks,
        checkpoint_dir,
        resume,
        overwrite,
        initial_epoch,
    ):
        self.model = _checked_model(model)
        x, y = _checked_batch(model, images, labels)
        self.epochs = positive_int(epochs, "epochs", minimum=0)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.optimizer = checked_optimizer(optimizer)
        weights = _checked_sample_weight(sample_weight, class_weight, y, model)
        weights = _unaliased(weights, model.weights)
        self.x, self.y, self.sample_weight, self.validation = _split(
            model, x, y, weights, validation_data, validation_split
        )
        self.shuffle = bool(shuffle)
        self.seed = checked_seed(seed)
        self.verbose = verbose
        self.loggers = [c for c in [progress.logger(verbose)] if c]
        self.callbacks = _checked_callbacks(callbacks)
        # Whose hooks may write the weights in place: then fit measures them again for the
        # overflow guard, after each epoch's hooks, and after each batch's if a batch hook may.
        self.writers = any(getattr(c, "writes_weights", True) for c in self.callbacks)
        self.batch_writers = any(map(writes_between_batches, self.callbacks))
        self.initial_epoch = positive_int(initial_epoch, "initial_epoch", minimum=0)
        backups = [c for c in self.callbacks if isinstance(c, BackupAndRestore)]
        self.backup = backups[0] if backups else None
        if self.backup is not None:
            if checkpoint_dir is not None:
                raise ValueError(
                    "Expected checkpoint_dir or a BackupAndRestore callback, not both. "
                    f"Received: checkpoint_dir={checkpoint_dir!r} and "
                    f"BackupAndRestore({self.backup.backup_dir!r})"
                )
            checkpoint_dir = self.backup.backup_dir
            resume = checkpoints.has_checkpoint(checkpoint_dir)
        if resume and checkpoint_dir is None:
            raise ValueError(
                "Expected checkpoint_dir with resume=True. Received: checkpoint_dir=None"
            )
        if checkpoint_dir is not None and not isinstance(self.optimizer, optimizers.Optimizer):
            raise TypeError(
                f"Expected a fastnaive optimizer with checkpoint_dir (its state is "
                f"saved). Received: optimizer={self.optimizer!r}"
            )
        self.checkpoint_dir = (
            None if checkpoint_dir is None else checked_path(checkpoint_dir, "checkpoint_dir")
        )
        self.resume = bool(resume)
        if self.resume and overwrite:
            raise ValueError(
                "Expected resume or overwrite, not both: resume continues the "
                "checkpoint that overwrite removes. Received: both True"
            )
        self.overwrite = bool(overwrite) and self.checkpoint_dir is not None
        if self.checkpoint_dir is not None and not (self.resume or overwrite):
            checkpoints.check_fresh(self.checkpoint_dir)

    def description(self):
        """What must agree on every rank, as a dict of plain values."""
        return {
            # Dropout seeds may differ: rank 0's are broadcast (_starting_state).
            "architecture": [
                {key: value for key, value in spec.items() if key != "seed"}
                for spec in self.model.architecture()["layers"]
            ],
            "loss": self.model.loss.name,
            "dtype": str(self.model.dtype),
            "samples": self.x.shape[0],
            "data checksum": distributed.checksum(*getattr(self.x, "arrays", (self.x,)), self.y),
            "validation samples": 0 if self.validation is None else len(self.validation[1]),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": repr(self.optimizer),
            "shuffle": self.shuffle,
            "seed": self.seed,
            "resume": self.resume,
            "initial_epoch": self.initial_epoch,
        }


def _starting_state(group, run):
    """Return (first epoch, seed, saved History or None), the same on every rank, with weights
    and optimizer state set.

    Rank 0 reads the checkpoint when resuming (and draws a seed when none is given) and
    broadcasts it, its weights and its dropout seeds; an error reading it is raised on every
    rank.
    """
    seed = run.seed if run.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    state = {"epochs_done": run.initial_epoch, "seed": seed, "history": None}
    if run.overwrite and group.is_root:
        checkpoints.clear(run.checkpoint_dir)
    if run.resume and group.is_root:
        try:
            state = checkpoints.load(run.checkpoint_dir, run.model, run.optimizer)
            run.model.set_weights(state.pop("weights"))
        except Exception as error:
            state = error
    state = group.broadcast(state)
    if isinstance(state, Exception):
        raise distributed.shared(state)
    if run.resume:
        run.optimizer.set_state(state["optimizer_state"])
    group.broadcast_weights(run.model)
    # Rank 0's dropout seeds: every rank draws the masks one process would.
    dropouts = [d for d in run.model.dropouts if d is not None]
    for dropout, dropout_seed in zip(dropouts, group.broadcast([d.seed for d in dropouts])):
        dropout.seed = dropout_seed
    return state["epochs_done"], state["seed"], state["history"]


def _shuffled_orders(n_samples, seed, first_epoch):
    """Yield each epoch's sample order from first_epoch on.

    The orders of the skipped epochs are drawn and dropped, so epoch e's order
    depends only on (seed, e): a resumed run sees the orders of an uninterrupted one.
    """
    rng = np.random.default_rng(seed)
    order = np.arange(n_samples)
    epoch = 0
    while True:
        rng.shuffle(order)
        if epoch >= first_epoch:
            yield order
        epoch += 1


def _train_epochs(group, run, step, callbacks, first_epoch, seed, position, interrupts):
    """The epoch loop of every fit: single-process or one rank of many."""
    model = run.model
    orders = _shuffled_orders(run.x.shape[0], seed, first_epoch) if run.shuffle else None
    model.stop_training = False
    history = callbacks[-1]
    logs = {}
    for callback in callbacks:
        callback.on_train_begin({})
    for epoch in range(first_epoch, run.epochs):
        position.epoch, position.batch = epoch, -1
        for callback in callbacks:
            callback.on_epoch_begin(epoch, {})
        order = next(orders) if orders is not None else None
        with step.threads():
            logs = _run_epoch(group, run, step, order, callbacks, position, interrupts)
            if run.validation is not None:
                logs.update(_validate(group, step, *run.validation))
        group.check_identical(model, f"after epoch {epoch}")
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if run.writers:
            step.weights_changed()  # a callback may have written them
        if run.checkpoint_dir is not None and group.is_root:
            checkpoints.save(
                run.checkpoint_dir, model, run.optimizer, epoch + 1, seed, history=history
            )
        if model.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end(logs)


def _run_epoch(group, run, step, order, callbacks, position, interrupts):
    """Train one pass over the data, in `order` if given; return its loss (and accuracy)."""
    x, y, w, batch_size = run.x, run.y, run.sample_weight, run.batch_size
    epoch, model = position.epoch, run.model
    n_samples = x.shape[0]
    total_loss, correct, seen = 0.0, 0, 0
    # Callback's batch hooks do nothing: a callback without its own is not called per batch.
    callbacks = [callback for callback in callbacks if has_batch_hooks(callback)]
    for batch, start in enumerate(range(0, n_samples, batch_size)):
        for callback in callbacks:
            callback.on_train_batch_begin(batch, {})
        stop = min(start + batch_size, n_samples)
        lo, hi = group.share(start, stop)
        if order is not None and hi > lo:
            xb, yb, wb = step.gather(x, y, order[lo:hi], w)
        else:
            xb, yb, wb = x[lo:hi], y[lo:hi], None if w is None else w[lo:hi]
        try:
            loss, batch_correct = step.train(xb, yb, stop - start, lo - start, wb)
        except FloatingPointError as error:
            # The reduced gradients, hence the overflow, are the same on every rank.
            raise distributed.shared(
                FloatingPointError(f"At epoch {epoch}, batch {batch}: {error}")
            ) from None
        position.batch = batch
        total_loss += loss * (stop - start)
        correct += batch_correct
        seen += stop - start
        if callbacks:
            logs = _logs(model, total_loss, correct, seen)
            logs["batch_loss"] = loss
            for callback in callbacks:
                callback.on_train_batch_end(batch, logs)
        if run.batch_writers:
            step.weights_changed()  # a callback may have written them
        if not math.isfinite(loss) and not model.stop_training:
            # The reduced loss is the same on every rank: all raise this together.
            raise distributed.shared(
                FloatingPointError(
                    f"The loss became {loss} at epoch {epoch}, batch {batch}; training stopped "
                    f"with the weights of the last finite step. Check the inputs for NaN or "
                    f"Inf and try a smaller learning rate."
                )
            )
        if interrupts[0]:
            raise _Interrupt
        if model.stop_training:
            break
    return _logs(model, total_loss, correct, seen)


def _logs(model, total_loss, correct, n_samples, prefix=""):
    """{"loss": mean, "accuracy": share of hits} (no accuracy for a regression loss)."""
    logs = {prefix + "loss": total_loss / n_samples}
    if model.loss.metric is not None:
        hits = n_samples * model.loss.hits_per_sample(model.output_size)
        logs[prefix + model.loss.metric] = correct / hits
    return logs


def _validate(group, step, x, y, w):
    """Return the validation logs over (x, y, w): each rank evaluates its share."""
    lo, hi = group.share(0, x.shape[0])
    loss_sum, correct = step.loss_and_correct(x[lo:hi], y[lo:hi], None if w is None else w[lo:hi])
    loss_sum, correct = group.total(loss_sum, correct)
    n = x.shape[0]
    return _logs(step.model, loss_sum + step.penalty() * n, correct, n, prefix="val_")


def evaluate_loss(model, images, labels, batch_size=1024, *, sample_weight=None):
    """Return (mean loss with the L2 penalty, accuracy) over the images, batch_size rows at a
    time; accuracy is None for a regression loss."""
    _checked_model(model)
    x, y = _checked_batch(model, images, labels)
    batch_size = positive_int(batch_size, "batch_size")
    w = _checked_sample_weight(sample_weight, None, y, model)
    step = engine.Step(model, min(batch_size, x.shape[0]), x, training=False)
    with step.threads():
        loss_sum, correct = step.loss_and_correct(x, y, w)
    logs = _logs(model, loss_sum + step.penalty() * x.shape[0], correct, x.shape[0])
    return logs["loss"], logs.get("accuracy")


def evaluate(model, images, labels):
    """Return the accuracy: the share of images whose highest output is at their label, for
    class indices and a model of several outputs, whatever its loss; for other targets, the
    loss's accuracy as evaluate_loss gives it."""
    _checked_model(model)
    y = np.asarray(labels)
    if not (y.dtype.kind in "iu" and y.ndim == 1 and model.output_size > 1):
        accuracy = evaluate_loss(model, images, labels)[1]
        if accuracy is None:
            raise ValueError(
                f"Expected a classification loss, or class indices, for accuracy. "
                f"Received: loss={model.loss.name!r} and labels of shape {y.shape}"
            )
        return accuracy
    predictions = model(images)
    y = as_labels(labels, predictions.shape[0], model.output_size)
    return float(np.mean(np.argmax(predictions, axis=1) == y))
