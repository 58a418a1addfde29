"""The book's training functions: gradients, weight updates, one step, fit and evaluate."""

import math
import os

import numpy as np

from fastnaive import checkpoints, distributed, engine, optimizers, progress
from fastnaive._validation import as_inputs, as_labels, positive_int
from fastnaive.callbacks import Callback, History
from fastnaive.models import NaiveSequential
from fastnaive.optimizers import SGD

__all__ = [
    "loss_and_gradients",
    "update_weights",
    "one_training_step",
    "fit",
    "evaluate",
    "evaluate_loss",
]


def _checked_model(model):
    if not isinstance(model, NaiveSequential):
        raise TypeError(f"Expected model to be a NaiveSequential. Received: {type(model).__name__}")
    model.check_weights()
    return model


def _checked_batch(model, images, labels):
    x = as_inputs(images, model.input_size, model.dtype)
    return x, as_labels(labels, x.shape[0], model.output_size)


def _checked_optimizer(optimizer, allow_name=False):
    if optimizer is None:
        return SGD()
    if isinstance(optimizer, str) and allow_name:
        return optimizers.get(optimizer)
    if not callable(getattr(optimizer, "apply_gradients", None)):
        raise TypeError(
            f"Expected optimizer with an apply_gradients method, such as "
            f"fastnaive.SGD. Received: {optimizer!r}"
        )
    return optimizer


def loss_and_gradients(model, images_batch, labels_batch):
    """Return (mean sparse categorical cross-entropy, [dW0, db0, dW1, db1, ...]) for the batch.

    The GradientTape step of the book: the loss of a softmax last layer is the
    cross-entropy of its probabilities; any other last layer's outputs are
    taken as logits. The gradients are new arrays, in `model.weights` order.
    """
    _checked_model(model)
    x, y = _checked_batch(model, images_batch, labels_batch)
    step = engine.step_for(model, x)
    with step.threads():
        loss = step.compute_gradients(x, y)
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

    A non-finite loss leaves the weights as they were.
    """
    optimizer = _checked_optimizer(optimizer)
    _checked_model(model)
    x, y = _checked_batch(model, images_batch, labels_batch)
    step = engine.step_for(model, x)
    step.use_optimizer(optimizer)
    with step.threads():
        loss, _ = step.train(x, y)
    return float(loss)


def _checked_callbacks(callbacks):
    callbacks = list(callbacks or [])
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(
                f"Expected callbacks of type fastnaive.callbacks.Callback. "
                f"Received: callbacks[{i}]={callback!r}"
            )
    return callbacks


def _split(model, x, y, validation_data, validation_split):
    """Return (x, y, validation (x, y) or None), the split taken from the end of the data."""
    if validation_data is not None and validation_split:
        raise ValueError(
            "Expected validation_data or validation_split, not both. "
            f"Received: validation_split={validation_split!r} and validation_data"
        )
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError(
                "Expected validation_data=(images, labels). "
                f"Received: {type(validation_data).__name__}"
            )
        return x, y, _checked_batch(model, *validation_data)
    if not (isinstance(validation_split, (int, float)) and 0 <= validation_split < 1):
        raise ValueError(f"Expected validation_split in [0, 1). Received: {validation_split!r}")
    n_val = int(x.shape[0] * validation_split)
    if validation_split and not 0 < n_val < x.shape[0]:
        raise ValueError(
            f"Expected validation_split to leave samples on both sides. "
            f"Received: validation_split={validation_split} of {x.shape[0]} samples"
        )
    if n_val == 0:
        return x, y, None
    cut = x.shape[0] - n_val
    return x[:cut], y[:cut], (x[cut:], y[cut:])


def fit(
    model,
    images,
    labels,
    epochs,
    batch_size=128,
    *,
    optimizer=None,
    shuffle=False,
    seed=None,
    validation_data=None,
    validation_split=0.0,
    verbose="book",
    callbacks=None,
    comm=None,
    checkpoint_dir=None,
    resume=False,
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

    With `comm`, an mpi4py communicator, every global batch of batch_size is
    shared among its ranks (fastnaive.distributed): every rank passes the same
    arguments and data, rank 0's initial weights are broadcast, callbacks run on
    every rank with the same logs, only rank 0 prints, and an error on one rank
    aborts the job. With `checkpoint_dir`, the model and the optimizer's state
    are written there after every epoch (fastnaive.checkpoints; by rank 0);
    resume=True continues from the last checkpoint there, on any number of ranks.
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
            shuffle,
            seed,
            validation_data,
            validation_split,
            verbose,
            callbacks,
            checkpoint_dir,
            resume,
        )
    except (TypeError, ValueError) as raised:
        error = raised
    group.agree(error, lambda: run.description())
    first_epoch, seed = _starting_state(group, run)
    n_samples = run.x.shape[0]
    capacity = max(1, math.ceil(min(run.batch_size, n_samples) / group.size))
    step = engine.Step(model, capacity, run.x, optimizer=run.optimizer, reducer=group.reducer)
    history = History()
    callbacks = (run.loggers if group.is_root else []) + run.callbacks + [history]
    params = {
        "epochs": run.epochs,
        "batch_size": run.batch_size,
        "samples": n_samples,
        "steps": math.ceil(n_samples / run.batch_size),
        "shuffle": run.shuffle,
        "initial_epoch": first_epoch,
        "ranks": group.size,
    }
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params(params)
    try:
        _train_epochs(group, run, step, callbacks, first_epoch, seed)
    except FloatingPointError:
        raise  # the reduced loss is the same on every rank: all raise it together
    except Exception as raised:
        group.abort(raised)
        raise
    history.params = params
    history.allreduce_seconds = group.reduce_seconds
    return history


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
        shuffle,
        seed,
        validation_data,
        validation_split,
        verbose,
        callbacks,
        checkpoint_dir,
        resume,
    ):
        self.model = _checked_model(model)
        x, y = _checked_batch(model, images, labels)
        self.epochs = positive_int(epochs, "epochs", minimum=0)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.optimizer = _checked_optimizer(optimizer, allow_name=True)
        self.x, self.y, self.validation = _split(model, x, y, validation_data, validation_split)
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.loggers = [c for c in [progress.logger(verbose)] if c]
        self.callbacks = _checked_callbacks(callbacks)
        if resume and checkpoint_dir is None:
            raise ValueError(
                "Expected checkpoint_dir with resume=True. Received: checkpoint_dir=None"
            )
        if checkpoint_dir is not None and not isinstance(self.optimizer, optimizers.Optimizer):
            raise TypeError(
                f"Expected a fastnaive optimizer with checkpoint_dir (its state is "
                f"saved). Received: optimizer={self.optimizer!r}"
            )
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.resume = bool(resume)

    def description(self):
        """What must agree on every rank, as a dict of plain values."""
        return {
            "architecture": [
                (layer.input_size, layer.output_size, layer.activation)
                for layer in self.model.layers
            ],
            "dtype": str(self.model.dtype),
            "samples": self.x.shape[0],
            "data checksum": distributed.checksum(self.x, self.y),
            "validation samples": 0 if self.validation is None else len(self.validation[1]),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": repr(self.optimizer),
            "shuffle": self.shuffle,
            "seed": self.seed,
            "resume": self.resume,
        }


def _starting_state(group, run):
    """Return (epochs done, seed), the same on every rank, with weights and optimizer state set.

    Rank 0 reads the checkpoint when resuming (and draws a seed when none is given) and
    broadcasts it and its weights; an error reading it is raised on every rank.
    """
    seed = run.seed if run.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    state = {"epochs_done": 0, "seed": seed}
    if run.resume and group.is_root:
        try:
            state = checkpoints.load(run.checkpoint_dir, run.model, run.optimizer)
            run.model.set_weights(state.pop("weights"))
        except (OSError, ValueError) as error:
            state = error
    state = group.broadcast(state)
    if isinstance(state, Exception):
        raise state
    if run.resume:
        run.optimizer.set_state(state["optimizer_state"])
    group.broadcast_weights(run.model)
    return state["epochs_done"], state["seed"]


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


def _train_epochs(group, run, step, callbacks, first_epoch, seed):
    """The epoch loop of every fit: single-process or one rank of many."""
    model = run.model
    orders = _shuffled_orders(run.x.shape[0], seed, first_epoch) if run.shuffle else None
    model.stop_training = False
    logs = {}
    for callback in callbacks:
        callback.on_train_begin({})
    for epoch in range(first_epoch, run.epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch, {})
        order = next(orders) if orders is not None else None
        with step.threads():
            logs = _run_epoch(group, run, step, order, callbacks, epoch)
            if run.validation is not None:
                logs["val_loss"], logs["val_accuracy"] = _validate(group, step, *run.validation)
        group.check_identical(model, f"after epoch {epoch}")
        if run.checkpoint_dir is not None and group.is_root:
            checkpoints.save(run.checkpoint_dir, model, run.optimizer, epoch + 1, seed)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end(logs)


def _run_epoch(group, run, step, order, callbacks, epoch):
    """Train one pass over the data, in `order` if given; return its loss and accuracy."""
    x, y, batch_size = run.x, run.y, run.batch_size
    n_samples = x.shape[0]
    total_loss, correct = 0.0, 0
    for batch, start in enumerate(range(0, n_samples, batch_size)):
        stop = min(start + batch_size, n_samples)
        lo, hi = group.share(start, stop)
        if order is not None and hi > lo:
            xb, yb = step.gather(x, y, order[lo:hi])
        else:
            xb, yb = x[lo:hi], y[lo:hi]
        loss, batch_correct = step.train(xb, yb, stop - start)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"The loss became {loss} at epoch {epoch}, batch {batch}; training stopped "
                f"with the weights of the last finite step. Check the inputs for NaN or "
                f"Inf and try a smaller learning rate."
            )
        total_loss += loss * (stop - start)
        correct += batch_correct
        for callback in callbacks:
            callback.on_batch_end(batch, {"loss": loss})
    return {"loss": total_loss / n_samples, "accuracy": correct / n_samples}


def _validate(group, step, x, y):
    """Return the mean cross-entropy and the accuracy over (x, y), shared among the ranks."""
    lo, hi = group.share(0, x.shape[0])
    loss_sum, correct = step.loss_and_correct(x[lo:hi], y[lo:hi])
    loss_sum, correct = group.total(loss_sum, correct)
    return loss_sum / x.shape[0], correct / x.shape[0]


def evaluate_loss(model, images, labels, batch_size=1024):
    """Return (mean cross-entropy, accuracy) over the images, computed batch_size rows at a time."""
    _checked_model(model)
    x, y = _checked_batch(model, images, labels)
    batch_size = positive_int(batch_size, "batch_size")
    step = engine.Step(model, min(batch_size, x.shape[0]), x, training=False)
    with step.threads():
        loss_sum, correct = step.loss_and_correct(x, y)
    return loss_sum / x.shape[0], correct / x.shape[0]


def evaluate(model, images, labels):
    """Return the accuracy: the share of images whose highest output is at their label."""
    _checked_model(model)
    predictions = model(images)
    y = as_labels(labels, predictions.shape[0], model.output_size)
    return float(np.mean(np.argmax(predictions, axis=1) == y))
