"""fastnaive: the MNIST MLP of Deep Learning with Python (ch. 2), trained by fused Cython kernels.

The book's API, with NumPy arrays for tensors:

    model = NaiveSequential([NaiveDense(784, 512, activation=relu),
                             NaiveDense(512, 10, activation=softmax)])
    fit(model, train_images, train_labels, epochs=10, batch_size=128)
    accuracy = evaluate(model, test_images, test_labels)
"""

import importlib

from fastnaive import activations, callbacks, losses, optimizers
from fastnaive.activations import relu, softmax
from fastnaive.batches import BatchGenerator
from fastnaive.layers import Dropout, NaiveDense
from fastnaive.models import NaiveSequential
from fastnaive.optimizers import SGD, Adam
from fastnaive.saving import load_model
from fastnaive.training import (
    TrainingInterrupted,
    evaluate,
    evaluate_loss,
    fit,
    loss_and_gradients,
    one_training_step,
    update_weights,
)

__version__ = "0.1.0"

__all__ = [
    "NaiveDense",
    "Dropout",
    "NaiveSequential",
    "BatchGenerator",
    "SGD",
    "Adam",
    "relu",
    "softmax",
    "load_model",
    "loss_and_gradients",
    "update_weights",
    "one_training_step",
    "fit",
    "evaluate",
    "evaluate_loss",
    "TrainingInterrupted",
    "activations",
    "callbacks",
    "datasets",
    "losses",
    "optimizers",
    "__version__",
]


def __getattr__(name):
    # The data loaders (zipfile, gzip, pathlib) load on first use, keeping the import quick.
    if name == "datasets":
        return importlib.import_module("fastnaive.datasets")
    raise AttributeError(f"module 'fastnaive' has no attribute {name!r}")
