"""NaiveSequential: the book's stack of layers, with Keras' training methods.

The book's functions (fastnaive.fit(model, ...), evaluate, one_training_step) take it as
they are; a Keras user's hands find compile, fit, evaluate, predict and summary on the model
itself, with Keras' argument names and defaults. The differences, all documented on the
methods: the optimizer defaults to the book's SGD(1e-3) rather than requiring compile;
accuracy is logged for every classification loss, whatever `metrics` says; predict computes
2048 rows at a time unless told otherwise (the outputs are the same).
"""

import numbers

from fastnaive import losses, optimizers, progress, training
from fastnaive.network import CHUNK_ROWS, Network

__all__ = ["NaiveSequential"]

# The metric names compile accepts: fastnaive logs the loss's accuracy under "accuracy".
ACCURACY_NAMES = (
    "accuracy",
    "acc",
    "sparse_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
)


class NaiveSequential(Network):
    """outputs = layers[-1](...layers[0](inputs)); probabilities when the last layer is softmax.

    `layers` are NaiveDense layers, with at most one Dropout after any but the last.
    `loss` is the training loss as Keras names it: "sparse_categorical_crossentropy" (the
    default, or "binary_crossentropy" for a sigmoid last layer), "categorical_crossentropy",
    "binary_crossentropy", "mean_squared_error" or "mse" (fastnaive.losses).
    """

    def compile(self, optimizer="sgd", loss=None, metrics=None):
        """Set the optimizer (a name in any case, "sgd", "momentum" or "adam", a fastnaive
        optimizer, or Keras' SGD or Adam, translated) and the loss (a name; None keeps the
        model's) that fit uses. metrics may name the accuracy (Keras' names for it); it is
        logged for any classification loss anyway."""
        if loss is not None:
            loss = losses.get(loss, self.dense_layers[-1].activation)
        for metric in [] if metrics is None else list(metrics):
            if metric not in ACCURACY_NAMES:
                raise ValueError(
                    f"Expected metrics among {', '.join(ACCURACY_NAMES)} (fastnaive logs the "
                    f"loss's accuracy). Received: metrics={metrics!r}"
                )
        self.optimizer = training.checked_optimizer(optimizer)
        if loss is not None:
            self.loss = loss

    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        epochs=1,
        verbose="auto",
        callbacks=None,
        validation_split=0.0,
        validation_data=None,
        shuffle=True,
        class_weight=None,
        sample_weight=None,
        initial_epoch=0,
        steps_per_epoch=None,
        validation_steps=None,
        validation_batch_size=None,
        validation_freq=1,
        *,
        seed=None,
        checkpoint_dir=None,
        resume=False,
    ):
        """Train as Keras' Model.fit does, with its arguments and defaults (batch_size 32,
        shuffle=True, verbose "auto"); return the History.

        The optimizer is the one compile set, kept from fit to fit with its state; without
        compile, the book's SGD(1e-3). fastnaive's own: `seed` (the shuffling order),
        `checkpoint_dir` and `resume` (fastnaive.fit). Arrays only: steps_per_epoch,
        validation_steps, validation_batch_size and validation_freq take their defaults.
        """
        for name, value, default in (
            ("steps_per_epoch", steps_per_epoch, None),
            ("validation_steps", validation_steps, None),
            ("validation_batch_size", validation_batch_size, None),
            ("validation_freq", validation_freq, 1),
        ):
            if value != default:
                raise ValueError(
                    f"Expected {name}={default!r}: fastnaive trains on whole arrays and "
                    f"validates after every epoch. Received: {name}={value!r}"
                )
        _check_given(x, "x")
        _check_given(y, "y")
        if self.optimizer is None:
            self.optimizer = optimizers.SGD()
        return training.fit(
            self,
            x,
            y,
            epochs,
            32 if batch_size is None else batch_size,
            optimizer=self.optimizer,
            sample_weight=sample_weight,
            class_weight=class_weight,
            shuffle=shuffle,
            seed=seed,
            validation_data=validation_data,
            validation_split=validation_split,
            verbose=verbose,
            callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            initial_epoch=initial_epoch,
        )

    def evaluate(
        self,
        x=None,
        y=None,
        batch_size=None,
        verbose="auto",
        sample_weight=None,
        steps=None,
        callbacks=None,
        return_dict=False,
    ):
        """Return [loss, accuracy] (the loss alone for a regression loss; a dict with
        return_dict=True) over (x, y), as Keras' Model.evaluate does; the loss includes the
        L2 penalties. verbose "auto", 1 or 2 prints the result on one line."""
        if steps is not None or callbacks:
            raise ValueError(
                "Expected steps=None and no callbacks: fastnaive evaluates whole arrays. "
                f"Received: steps={steps!r}, callbacks={callbacks!r}"
            )
        _check_given(x, "x")
        _check_given(y, "y")
        batch_size = 32 if batch_size is None else batch_size
        loss, accuracy = training.evaluate_loss(self, x, y, batch_size, sample_weight=sample_weight)
        logs = {"loss": loss}
        if accuracy is not None:
            logs[self.loss.metric] = accuracy
        if progress.prints(verbose):
            print(" - ".join(f"{key}: {value:.4f}" for key, value in logs.items()))
        if return_dict:
            return logs
        return list(logs.values()) if len(logs) > 1 else loss

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Return the model's outputs for x (probabilities after a softmax or sigmoid head),
        as Keras' Model.predict does. batch_size None computes 2048 rows at a time; any
        batch_size gives the same outputs. verbose is accepted and prints nothing."""
        if steps is not None or callbacks:
            raise ValueError(
                "Expected steps=None and no callbacks: fastnaive predicts whole arrays. "
                f"Received: steps={steps!r}, callbacks={callbacks!r}"
            )
        progress.prints(verbose)  # checked as fit checks it
        return super().predict(x, CHUNK_ROWS if batch_size is None else batch_size)


def _check_given(value, name):
    if value is None:
        raise ValueError(f"Expected {name}, an array. Received: {name}=None")
    if isinstance(value, numbers.Number):
        raise TypeError(f"Expected {name}, an array. Received: {name}={value!r}")
