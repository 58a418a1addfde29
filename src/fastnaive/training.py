"""The book's training functions: gradients, weight updates, one step, fit and evaluate."""
import math

import numpy as np

from fastnaive import _kernels, engine, optimizers, progress
from fastnaive._validation import as_inputs, as_labels, positive_int
from fastnaive.callbacks import Callback, History
from fastnaive.models import NaiveSequential
from fastnaive.optimizers import SGD

__all__ = ["loss_and_gradients", "update_weights", "one_training_step", "fit", "evaluate",
           "evaluate_loss"]


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
        raise TypeError(f"Expected optimizer with an apply_gradients method, such as "
                        f"fastnaive.SGD. Received: {optimizer!r}")
    return optimizer


def _workspace(model, x):
    workspace = engine.workspace_for(model, x.shape[0])
    workspace.use_sparse_input(engine.is_sparse(x))
    return workspace


def _gradients_into_workspace(model, workspace, x, y):
    engine.forward(model, workspace, x)
    loss = engine.loss_gradient(workspace, y)
    engine.backpropagate(model, workspace, x)
    return loss, workspace.gradients


def loss_and_gradients(model, images_batch, labels_batch):
    """Return (mean sparse categorical cross-entropy, [dW0, db0, dW1, db1, ...]) for the batch.

    The GradientTape step of the book: the loss of a softmax last layer is the
    cross-entropy of its probabilities; any other last layer's outputs are
    taken as logits. The gradients are new arrays, in `model.weights` order.
    """
    _checked_model(model)
    x, y = _checked_batch(model, images_batch, labels_batch)
    workspace = _workspace(model, x)
    with engine.threads_for(workspace):
        loss, gradients = _gradients_into_workspace(model, workspace, x, y)
    return loss, [g.copy() for g in gradients]


def update_weights(gradients, weights, learning_rate=1e-3):
    """w := w - learning_rate * g for each pair, in place."""
    gradients, weights = list(gradients), list(weights)
    if len(gradients) != len(weights):
        raise ValueError(f"Expected one gradient per weight. Received: {len(gradients)} "
                         f"gradients for {len(weights)} weights")
    SGD(learning_rate).apply_gradients(zip(gradients, weights))


def one_training_step(model, images_batch, labels_batch, *, optimizer=None):
    """Compute the batch's loss and gradients, update the weights; return the loss as a float."""
    optimizer = _checked_optimizer(optimizer)
    _checked_model(model)
    x, y = _checked_batch(model, images_batch, labels_batch)
    workspace = _workspace(model, x)
    with engine.threads_for(workspace):
        loss, gradients = _gradients_into_workspace(model, workspace, x, y)
        optimizer.apply_gradients(zip(gradients, model.weights))
    return float(loss)


def _train_step(model, workspace, x, y, optimizer, update):
    """One step of fit; return (loss, correct predictions) of the batch before the update.

    SGD is fused into the weight-gradient GEMMs; other optimizers are applied
    to the gradients by `update` (optimizers.updater). A non-finite loss returns
    before any weight changes.
    """
    logits = engine.forward(model, workspace, x)
    correct = _kernels.count_correct_checked(logits, y)
    loss = engine.loss_gradient(workspace, y)
    if not math.isfinite(loss):
        return loss, correct
    if type(optimizer) is SGD and optimizer.momentum == 0:
        engine.backpropagate(model, workspace, x, learning_rate=optimizer.learning_rate)
        optimizer.iterations += 1
    else:
        engine.backpropagate(model, workspace, x)
        update()
    return loss, correct


def _checked_callbacks(callbacks):
    callbacks = list(callbacks or [])
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"Expected callbacks of type fastnaive.callbacks.Callback. "
                            f"Received: callbacks[{i}]={callback!r}")
    return callbacks


def _split(model, x, y, validation_data, validation_split):
    """Return (x, y, validation (x, y) or None), the split taken from the end of the data."""
    if validation_data is not None and validation_split:
        raise ValueError("Expected validation_data or validation_split, not both. "
                         f"Received: validation_split={validation_split!r} and validation_data")
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("Expected validation_data=(images, labels). "
                             f"Received: {type(validation_data).__name__}")
        return x, y, _checked_batch(model, *validation_data)
    if not (isinstance(validation_split, (int, float)) and 0 <= validation_split < 1):
        raise ValueError(f"Expected validation_split in [0, 1). Received: {validation_split!r}")
    n_val = int(x.shape[0] * validation_split)
    if validation_split and not 0 < n_val < x.shape[0]:
        raise ValueError(f"Expected validation_split to leave samples on both sides. "
                         f"Received: validation_split={validation_split} of {x.shape[0]} samples")
    if n_val == 0:
        return x, y, None
    cut = x.shape[0] - n_val
    return x[:cut], y[:cut], (x[cut:], y[cut:])


def fit(model, images, labels, epochs, batch_size=128, *, optimizer=None, shuffle=False,
        seed=None, validation_data=None, validation_split=0.0, verbose="book", callbacks=None,
        comm=None):
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
    weights of the last finite step. With `comm`, an mpi4py communicator,
    every batch is shared among its ranks (fastnaive.distributed.fit_distributed).
    """
    if comm is not None:
        from fastnaive.distributed import fit_distributed
        return fit_distributed(model, images, labels, epochs, batch_size, comm=comm,
                               optimizer=optimizer, shuffle=shuffle, seed=seed, verbose=verbose,
                               callbacks=callbacks, validation_data=validation_data,
                               validation_split=validation_split)
    _checked_model(model)
    x, y = _checked_batch(model, images, labels)
    epochs = positive_int(epochs, "epochs", minimum=0)
    batch_size = positive_int(batch_size, "batch_size")
    optimizer = _checked_optimizer(optimizer, allow_name=True)
    x, y, validation = _split(model, x, y, validation_data, validation_split)
    history = History()
    callbacks = [c for c in [progress.logger(verbose)] if c] + _checked_callbacks(callbacks) \
        + [history]
    params = {"epochs": epochs, "batch_size": batch_size, "samples": x.shape[0],
              "steps": math.ceil(x.shape[0] / batch_size), "shuffle": bool(shuffle)}
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params(params)
    workspace = engine.workspace_for(model, min(batch_size, x.shape[0]))
    workspace.use_sparse_input(engine.is_sparse(x))
    update = optimizers.updater(optimizer, workspace.gradients, model.weights)
    rng = np.random.default_rng(seed)
    order = np.arange(x.shape[0]) if shuffle else None
    model.stop_training = False
    logs = {}
    for callback in callbacks:
        callback.on_train_begin({})
    for epoch in range(epochs):
        for callback in callbacks:
            callback.on_epoch_begin(epoch, {})
        if shuffle:
            rng.shuffle(order)
        with engine.threads_for(workspace):
            logs = _run_epoch(model, workspace, x, y, batch_size, order, optimizer, update,
                              callbacks, epoch)
            if validation is not None:
                logs["val_loss"], logs["val_accuracy"] = engine.loss_and_accuracy(
                    model, workspace, *validation)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end(logs)
    history.params = params
    return history


def _run_epoch(model, workspace, x, y, batch_size, order, optimizer, update, callbacks, epoch):
    """Train one pass over (x, y), in `order` if given; return the epoch's loss and accuracy."""
    n_samples = x.shape[0]
    total_loss, correct = 0.0, 0
    for batch, start in enumerate(range(0, n_samples, batch_size)):
        stop = min(start + batch_size, n_samples)
        if order is not None:
            xb, yb = workspace.gathered(x, y, order[start:stop])
        else:
            xb, yb = x[start:stop], y[start:stop]
        loss, batch_correct = _train_step(model, workspace, xb, yb, optimizer, update)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"The loss became {loss} at epoch {epoch}, batch {batch}; training stopped "
                f"with the weights of the last finite step. Check the inputs for NaN or "
                f"Inf and try a smaller learning rate.")
        total_loss += loss * (stop - start)
        correct += batch_correct
        for callback in callbacks:
            callback.on_batch_end(batch, {"loss": loss})
    return {"loss": total_loss / n_samples, "accuracy": correct / n_samples}


def evaluate_loss(model, images, labels, batch_size=1024):
    """Return (mean cross-entropy, accuracy) over the images, computed batch_size rows at a time."""
    _checked_model(model)
    x, y = _checked_batch(model, images, labels)
    batch_size = positive_int(batch_size, "batch_size")
    workspace = engine.Workspace(model, min(batch_size, x.shape[0]))
    workspace.use_sparse_input(engine.is_sparse(x))
    with engine.threads_for(workspace):
        return engine.loss_and_accuracy(model, workspace, x, y)


def evaluate(model, images, labels):
    """Return the accuracy: the share of images whose highest output is at their label."""
    _checked_model(model)
    predictions = model(images)
    y = as_labels(labels, predictions.shape[0], model.output_size)
    return float(np.mean(np.argmax(predictions, axis=1) == y))
