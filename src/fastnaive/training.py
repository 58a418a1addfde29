"""The book's training functions: gradients, weight updates, one step, fit and evaluate."""
import math

import numpy as np

from fastnaive import engine
from fastnaive._validation import as_inputs, as_labels, positive_int
from fastnaive.callbacks import Callback
from fastnaive.models import NaiveSequential
from fastnaive.optimizers import SGD

__all__ = ["loss_and_gradients", "update_weights", "one_training_step", "fit", "evaluate"]


def _checked_model(model):
    if not isinstance(model, NaiveSequential):
        raise TypeError(f"Expected model to be a NaiveSequential. Received: {type(model).__name__}")
    model.check_weights()
    return model


def _checked_batch(model, images, labels):
    x = as_inputs(images, model.input_size, model.dtype)
    return x, as_labels(labels, x.shape[0], model.output_size)


def _checked_optimizer(optimizer):
    if optimizer is None:
        return SGD()
    if not callable(getattr(optimizer, "apply_gradients", None)):
        raise TypeError(f"Expected optimizer with an apply_gradients method, such as "
                        f"fastnaive.SGD. Received: {optimizer!r}")
    return optimizer


def _gradients_into_workspace(model, x, y):
    workspace = engine.workspace_for(model, x.shape[0])
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
    loss, gradients = _gradients_into_workspace(model, x, y)
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
    loss, gradients = _gradients_into_workspace(model, x, y)
    optimizer.apply_gradients(zip(gradients, model.weights))
    return float(loss)


def _train_step(model, workspace, x, y, optimizer):
    """One step of fit: SGD fused into the weight-gradient GEMMs, other optimizers applied after."""
    engine.forward(model, workspace, x)
    loss = engine.loss_gradient(workspace, y)
    if not math.isfinite(loss):
        return loss
    if type(optimizer) is SGD:
        engine.backpropagate(model, workspace, x, learning_rate=optimizer.learning_rate)
    else:
        engine.backpropagate(model, workspace, x)
        optimizer.apply_gradients(zip(workspace.gradients, model.weights))
    return loss


def _checked_callbacks(callbacks):
    callbacks = list(callbacks or [])
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"Expected callbacks of type fastnaive.callbacks.Callback. "
                            f"Received: callbacks[{i}]={callback!r}")
    return callbacks


def fit(model, images, labels, epochs, batch_size=128, *, optimizer=None, callbacks=None):
    """Train on (images, labels) in order, in batches of batch_size; return each epoch's mean loss.

    Prints the book's lines: "Epoch N", then "loss at batch K: x.xx" every 100
    batches. A loss that turns NaN or infinite stops training with a
    FloatingPointError, leaving the weights of the last finite step.
    """
    _checked_model(model)
    x, y = _checked_batch(model, images, labels)
    epochs = positive_int(epochs, "epochs", minimum=0)
    batch_size = positive_int(batch_size, "batch_size")
    optimizer = _checked_optimizer(optimizer)
    callbacks = _checked_callbacks(callbacks)
    n_samples = x.shape[0]
    workspace = engine.workspace_for(model, min(batch_size, n_samples))
    epoch_losses = []
    for callback in callbacks:
        callback.on_train_begin()
    for epoch in range(epochs):
        print(f"Epoch {epoch}")
        for callback in callbacks:
            callback.on_epoch_begin(epoch)
        total = 0.0
        for batch, start in enumerate(range(0, n_samples, batch_size)):
            stop = min(start + batch_size, n_samples)
            loss = _train_step(model, workspace, x[start:stop], y[start:stop], optimizer)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"The loss became {loss} at epoch {epoch}, batch {batch}; training stopped "
                    f"with the weights of the last finite step. Check the inputs for NaN or "
                    f"Inf and try a smaller learning rate.")
            total += loss * (stop - start)
            if batch % 100 == 0:
                print(f"loss at batch {batch}: {loss:.2f}")
            for callback in callbacks:
                callback.on_batch_end(batch, {"loss": loss})
        epoch_losses.append(total / n_samples)
        for callback in callbacks:
            callback.on_epoch_end(epoch, {"loss": epoch_losses[-1]})
    for callback in callbacks:
        callback.on_train_end()
    return epoch_losses


def evaluate(model, images, labels):
    """Return the accuracy: the share of images whose highest output is at their label."""
    _checked_model(model)
    predictions = model(images)
    y = as_labels(labels, predictions.shape[0], model.output_size)
    return float(np.mean(np.argmax(predictions, axis=1) == y))
