"""fastnaive.keras.fit, accelerate and optimizer_from_keras, against Keras' own fit.

Each comparison trains twin Keras models (the same initial weights) on real data in the same
order (shuffle=False): one with `model.fit`, one with `fastnaive.keras.fit`, and compares the
final weights and the History.

Tolerances: max|a - b| <= RTOL * max|b| over each weight array, b the Keras model's.

    optimizer       RTOL    worst measured   why
    SGD, float32    5e-6    5.6e-7           gradients summed in other orders (BLAS blocking,
                                             the first layer on MNIST's nonzeros), one epoch
    SGD, float64    1e-12   1e-15            the same, in float64 (Keras' floatx float64)
    Adam, float32   1e-4    3.3e-5           the same roundings, and Keras computing Adam's
                                             bias corrections from float32 betas, in float32
                                             (a step size up to 7e-6 apart from fastnaive's),
                                             which Adam's normalised steps carry into every
                                             weight

The History's losses agree within LOSS_RTOL; accuracies within 2/256 (an output at a
rounding's distance from the decision can fall either way).
"""

import csv
import inspect
import re

import keras
import numpy as np
import pytest
from helpers import assert_scaled_close
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

import fastnaive
from fastnaive.keras import accelerate, optimizer_from_keras
from fastnaive.keras import fit as fast_fit

RTOL = {"SGD": 5e-6, "Adam": 1e-4}
LOSS_RTOL = {"SGD": 1e-5, "Adam": 1e-4}
Dense, Input = keras.layers.Dense, keras.layers.Input


# Data: real and small, as (x, y, x_validation, y_validation).


def mnist_data(mnist, shape=(784,)):
    (images, labels), _ = mnist
    x, y = images[:1280].reshape(-1, *shape), labels[:1280]
    return x[:1024], y[:1024], x[1024:], y[1024:]


def standardized(x):
    return ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)


def digits_data(mnist):
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16).astype(np.float32), np.eye(10, dtype=np.float32)[y]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def cancer_data(mnist):
    x, y = load_breast_cancer(return_X_y=True)
    x, y = standardized(x), y.astype(np.float32)
    return x[:450], y[:450], x[450:], y[450:]


def diabetes_data(mnist):
    x, y = load_diabetes(return_X_y=True)
    return standardized(x)[:350], standardized(y[:, None])[:350, 0], None, None


def twins(layers, compile_kwargs):
    """Two Keras models of `layers()` with the same initial weights, each compiled with
    its own objects from compile_kwargs()."""
    keras.utils.set_random_seed(0)
    models = [keras.Sequential(layers()) for _ in range(2)]
    models[1].set_weights(models[0].get_weights())
    for model in models:
        model.compile(**compile_kwargs())
    return models


def assert_same_training(fast, slow, fast_history, slow_history, optimizer):
    """The fastnaive-trained twin ends where Keras' does, and logs what Keras logs."""
    for actual, expected in zip(fast.get_weights(), slow.get_weights(), strict=True):
        assert_scaled_close(actual, expected, RTOL[optimizer])
    assert list(fast_history.history) == list(slow_history.history)
    assert fast_history.epoch == slow_history.epoch
    for key, expected in slow_history.history.items():
        tolerance = dict(atol=2 / 256) if "acc" in key else dict(rtol=LOSS_RTOL[optimizer])
        np.testing.assert_allclose(fast_history.history[key], expected, err_msg=key, **tolerance)
    assert int(fast.optimizer.iterations) == int(slow.optimizer.iterations)


# Case: (data, layers, compile arguments, fit arguments besides the data, or a function of
# the data giving them).
CASES = {
    "sgd-sparse-softmax-validation_split": (
        mnist_data,
        lambda: [Input((784,)), Dense(32, activation="relu"), Dense(10, activation="softmax")],
        lambda: dict(
            optimizer=keras.optimizers.SGD(0.1),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        ),
        lambda x, y, xv, yv: dict(validation_split=0.2),
    ),
    "momentum-categorical-logits-class_weight-l2": (
        digits_data,
        lambda: [
            Input((64,)),
            Dense(32, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3)),
            Dense(10),
        ],
        lambda: dict(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.CategoricalAccuracy()],
        ),
        lambda x, y, xv, yv: dict(
            class_weight={0: 2.0, 3: 0.5}, validation_data=(xv, yv), batch_size=50
        ),
    ),
    "nesterov-binary-sigmoid-sample_weight": (
        cancer_data,
        lambda: [Input((30,)), Dense(16, activation="tanh"), Dense(1, activation="sigmoid")],
        lambda: dict(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.8, nesterov=True),
            loss="binary_crossentropy",
            metrics=["acc"],
        ),
        lambda x, y, xv, yv: dict(
            sample_weight=np.linspace(0.5, 2.0, len(y)),
            validation_data=(xv, yv, np.linspace(2.0, 0.1, len(yv))),
            batch_size=20,
        ),
    ),
    "adam-mse-cosine-schedule": (
        diabetes_data,
        lambda: [Input((10,)), Dense(16, activation="tanh"), Dense(8, activation="relu"), Dense(1)],
        lambda: dict(
            optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(0.02, 20)),
            loss=keras.losses.MeanSquaredError(),
        ),
        lambda x, y, xv, yv: dict(validation_split=0.25, batch_size=16),
    ),
    "adam-sparse-logits-flatten": (
        lambda mnist: mnist_data(mnist, shape=(28, 28)),
        lambda: [Input((28, 28)), keras.layers.Flatten(), Dense(32, activation="relu"), Dense(10)],
        lambda: dict(
            optimizer=keras.optimizers.Adam(2e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy()],
        ),
        lambda x, y, xv, yv: dict(validation_data=(xv, yv)),
    ),
    "adam-binary-logits": (
        cancer_data,
        lambda: [Input((30,)), Dense(16, activation="relu"), Dense(1)],
        lambda: dict(
            optimizer="adam",
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)],
        ),
        lambda x, y, xv, yv: dict(validation_data=(xv, yv)),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_one_epoch_ends_with_keras_weights_and_history(case, mnist):
    data, layers, compile_kwargs, fit_kwargs = CASES[case]
    x, y, xv, yv = data(mnist)
    fast, slow = twins(layers, compile_kwargs)
    kwargs = dict(epochs=1, shuffle=False, verbose=0, **fit_kwargs(x, y, xv, yv))
    slow_history = slow.fit(x, y, **kwargs)
    fast_history = fast_fit(fast, x, y, **kwargs)
    assert isinstance(fast_history, keras.callbacks.History)
    assert fast.history is fast_history
    assert_same_training(fast, slow, fast_history, slow_history, type(slow.optimizer).__name__)


@pytest.fixture
def floatx64():
    """Keras' floatx and dtype policy float64: its layers, compiled loss and learning rate are
    then float64."""
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def test_float64_sgd_ends_with_keras_weights_to_float64_rounding(floatx64):
    x, y, xv, yv = cancer_data(None)
    fast, slow = twins(
        lambda: [Input((30,)), Dense(16, activation="relu"), Dense(1, activation="sigmoid")],
        lambda: dict(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
            loss="binary_crossentropy",
        ),
    )
    assert fast.layers[0].kernel.dtype == "float64"
    kwargs = dict(epochs=1, shuffle=False, verbose=0, batch_size=25, validation_data=(xv, yv))
    slow_history = slow.fit(x.astype(np.float64), y, **kwargs)
    fast_history = fast_fit(fast, x.astype(np.float64), y, **kwargs)
    for actual, expected in zip(fast.get_weights(), slow.get_weights(), strict=True):
        assert actual.dtype == np.float64
        assert_scaled_close(actual, expected, 1e-12)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(fast_history.history[key], slow_history.history[key], 1e-12)


ADAM_ON_CANCER = (
    lambda: [Input((30,)), Dense(16, activation="relu"), Dense(1, activation="sigmoid")],
    lambda: dict(optimizer=keras.optimizers.Adam(5e-3), loss="binary_crossentropy"),
)


def test_training_continues_between_keras_fit_and_fastnaive_fit():
    """The optimizer's iteration count and moments go both ways: any mix of Keras' fit and
    fastnaive's over two epochs ends where Keras alone does."""
    x, y, _, _ = cancer_data(None)
    first, second = dict(epochs=1), dict(epochs=2, initial_epoch=1)
    runs = {
        "keras, keras": (keras.Model.fit, keras.Model.fit),
        "fastnaive, keras": (fast_fit, keras.Model.fit),
        "keras, fastnaive": (keras.Model.fit, fast_fit),
    }
    models = {}
    for name, (fit_first, fit_second) in runs.items():
        (models[name],) = twins(*ADAM_ON_CANCER)[:1]
        for fit, epochs in ((fit_first, first), (fit_second, second)):
            history = fit(models[name], x, y, shuffle=False, verbose=0, batch_size=30, **epochs)
        assert history.epoch == [1]
    expected = models["keras, keras"]
    for name in ("fastnaive, keras", "keras, fastnaive"):
        assert int(models[name].optimizer.iterations) == int(expected.optimizer.iterations) == 30
        for actual, wanted in zip(models[name].get_weights(), expected.get_weights()):
            assert_scaled_close(actual, wanted, RTOL["Adam"])


def test_learning_rate_callbacks_change_the_rate_as_in_keras():
    x, y, _, _ = cancer_data(None)
    fast, slow = twins(
        ADAM_ON_CANCER[0],
        lambda: dict(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="binary_crossentropy"
        ),
    )
    histories = [
        fit(
            model,
            x,
            y,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[
                keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate * 0.8),
                keras.callbacks.ReduceLROnPlateau(monitor="loss", min_delta=10, patience=0),
            ],
        )
        for fit, model in ((fast_fit, fast), (keras.Model.fit, slow))
    ]
    # 0.05 * 0.8 at each epoch's start; * 0.1 (ReduceLROnPlateau's factor) after epoch 1
    assert histories[1].history["learning_rate"] == pytest.approx([0.04, 0.032, 0.00256], 1e-6)
    assert_same_training(fast, slow, *histories, "SGD")


HOOKS = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_epoch_end",
    "on_train_end",
)


def recording_callback(model, calls):
    """A LambdaCallback recording each hook: its name, arguments and the first bias of
    `model` at the time."""

    def hook(name):
        def record(*args, **kwargs):
            values = [dict(v) if isinstance(v, dict) else v for v in (*args, *kwargs.values())]
            calls.append((name, *values, model.layers[0].bias.numpy()))

        return record

    return keras.callbacks.LambdaCallback(**{name: hook(name) for name in HOOKS})


def assert_same_calls(fast_calls, slow_calls):
    assert len(fast_calls) == len(slow_calls)
    for fast_call, slow_call in zip(fast_calls, slow_calls):
        assert len(fast_call) == len(slow_call), (fast_call, slow_call)
        for actual, expected in zip(fast_call, slow_call):
            if isinstance(expected, dict):
                assert list(actual) == list(expected), fast_call[:2]
                np.testing.assert_allclose(list(actual.values()), list(expected.values()), 1e-5)
            elif isinstance(expected, np.ndarray):
                assert_scaled_close(actual, expected, RTOL["SGD"])
            else:
                assert actual == expected


def csv_rows(path):
    """The CSV's header and its rows as floats ("NA" as NaN)."""
    header, *rows = csv.reader(open(path))
    return header, np.array([[np.nan if v == "NA" else float(v) for v in row] for row in rows])


def test_keras_callbacks_see_the_hooks_logs_and_weights_keras_gives_them(tmp_path, mnist):
    """Hooks in Keras' order, with Keras' epoch numbers, keys and logs (batch logs: the
    running mean loss); the Keras model holds the trained weights whenever a callback reads
    or saves it; CSVLogger, ModelCheckpoint and EarlyStopping write and stop as under Keras."""
    x, y, xv, yv = mnist_data(mnist)
    x, y = x[:320], y[:320]
    fast, slow = twins(
        CASES["sgd-sparse-softmax-validation_split"][1],
        lambda: dict(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy"),
    )
    runs = {}
    for name, fit, model in (("fast", fast_fit, fast), ("slow", keras.Model.fit, slow)):
        folder = tmp_path / name
        folder.mkdir()
        calls = []
        history = fit(
            model,
            x,
            y,
            epochs=5,
            initial_epoch=1,
            validation_data=(xv, yv),
            validation_freq=2,
            shuffle=False,
            verbose=0,
            callbacks=[
                recording_callback(model, calls),
                keras.callbacks.CSVLogger(str(folder / "log.csv")),
                keras.callbacks.ModelCheckpoint(
                    str(folder / "{epoch}.weights.h5"), save_weights_only=True
                ),
                keras.callbacks.EarlyStopping(monitor="loss", min_delta=10, patience=2),
            ],
        )
        runs[name] = folder, calls, history
    (fast_folder, fast_calls, fast_history), (slow_folder, slow_calls, slow_history) = runs.values()
    assert slow_history.epoch == [1, 2, 3]  # EarlyStopping: no improvement after epoch 1
    assert list(slow_history.history) == ["loss", "val_loss"]  # at epochs 1 and 3
    assert_same_training(fast, slow, fast_history, slow_history, "SGD")
    assert len(slow_calls) == 2 + 3 * (2 + 2 * 10)
    assert_same_calls(fast_calls, slow_calls)
    names = sorted(path.name for path in fast_folder.iterdir())
    assert names == sorted(path.name for path in slow_folder.iterdir())
    assert names == ["2.weights.h5", "3.weights.h5", "4.weights.h5", "log.csv"]
    (fast_header, fast_rows), (slow_header, slow_rows) = (
        csv_rows(folder / "log.csv") for folder in (fast_folder, slow_folder)
    )
    assert fast_header == slow_header == ["epoch", "loss", "val_loss"]
    np.testing.assert_allclose(fast_rows, slow_rows, rtol=1e-5)
    saved = keras.Sequential(CASES["sgd-sparse-softmax-validation_split"][1]())
    saved.load_weights(fast_folder / "4.weights.h5")
    for actual, expected in zip(saved.get_weights(), fast.get_weights()):
        np.testing.assert_array_equal(actual, expected)


# Refusals: before any training, naming what fastnaive cannot do as Keras does.

X4 = np.random.default_rng(0).random((10, 4), dtype=np.float32)
Y3 = np.arange(10) % 3


def compiled(layers=None, **compile_kwargs):
    """A small compiled Sequential: 4 inputs, 3 softmax outputs unless `layers` says."""
    model = keras.Sequential(layers or [Input((4,)), Dense(3, activation="softmax")])
    model.compile(
        **{"optimizer": "sgd", "loss": "sparse_categorical_crossentropy", **compile_kwargs}
    )
    return model


def sgd(**kwargs):
    return lambda: compiled(optimizer=keras.optimizers.SGD(**kwargs))


def linear_head(**compile_kwargs):
    return lambda: compiled([Input((4,)), Dense(3)], **compile_kwargs)


class HalvingSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return 0.1 / (1 + step)


class PrintingCallback(keras.callbacks.Callback):
    pass


# Case: (a function making the model, fit's arguments besides the model, the error, its
# message).
REFUSALS = {
    "functional-model": (
        lambda: keras.Model(*(lambda i: (i, Dense(3)(i)))(Input((4,)))),
        {},
        TypeError,
        "compiled keras.Sequential. Received: Functional",
    ),
    "not-compiled": (
        lambda: keras.Sequential([Input((4,)), Dense(3)]),
        {},
        ValueError,
        "call compile\\(\\) first",
    ),
    "conv-layer": (
        lambda: compiled([Input((4,)), keras.layers.Reshape((4, 1)), keras.layers.Conv1D(3, 2)]),
        {},
        ValueError,
        "Received: layer 'reshape.*' with type Reshape",
    ),
    "frozen-layer": (
        lambda: compiled([Input((4,)), Dense(3, activation="softmax", trainable=False)]),
        {},
        ValueError,
        "with trainable=False",
    ),
    "kernel-constraint": (
        lambda: compiled(
            [Input((4,)), Dense(3, "softmax", kernel_constraint=keras.constraints.MaxNorm(1))]
        ),
        {},
        ValueError,
        "with a kernel or bias constraint",
    ),
    "dropout-noise-shape": (
        lambda: compiled(
            [
                Input((4,)),
                Dense(5),
                keras.layers.Dropout(0.5, noise_shape=(None, 1)),
                Dense(3, activation="softmax"),
            ]
        ),
        {},
        ValueError,
        "with noise_shape=\\(None, 1\\)",
    ),
    "rmsprop": (
        lambda: compiled(optimizer="rmsprop"),
        {},
        TypeError,
        "keras.optimizers.SGD .* Received: optimizer=RMSprop",
    ),
    "adamw": (
        lambda: compiled(optimizer=keras.optimizers.AdamW()),
        {},
        TypeError,
        "Received: optimizer=AdamW",
    ),
    "weight_decay": (sgd(weight_decay=0.01), {}, ValueError, "Received: weight_decay=0.01"),
    "clipnorm": (sgd(clipnorm=1.0), {}, ValueError, "without clipnorm; .* Received: clipnorm=1.0"),
    "clipvalue": (sgd(clipvalue=1.0), {}, ValueError, "Received: clipvalue=1.0"),
    "global_clipnorm": (sgd(global_clipnorm=1.0), {}, ValueError, "Received: global_clipnorm"),
    "use_ema": (sgd(use_ema=True), {}, ValueError, "Received: use_ema=True"),
    "loss_scale_factor": (sgd(loss_scale_factor=2.0), {}, ValueError, "loss_scale_factor=2.0"),
    "gradient_accumulation": (
        sgd(gradient_accumulation_steps=2),
        {},
        ValueError,
        "Received: gradient_accumulation_steps=2",
    ),
    "amsgrad": (
        lambda: compiled(optimizer=keras.optimizers.Adam(amsgrad=True)),
        {},
        ValueError,
        "Keras Adam without amsgrad; .*beta_1.* Received: amsgrad=True",
    ),
    "custom-schedule": (
        sgd(learning_rate=HalvingSchedule()),
        {},
        TypeError,
        "Expected learning_rate to be a float or one of keras.optimizers.schedules",
    ),
    "schedule-reaching-zero": (
        sgd(learning_rate=keras.optimizers.schedules.PolynomialDecay(0.1, 2, 0.0)),
        {"batch_size": 4},
        ValueError,
        "schedule > 0 at each of the run's steps 0..2 .* giving 0.0 at step 2",
    ),
    "schedule-with-lr-callback": (
        sgd(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)),
        {"callbacks": [keras.callbacks.ReduceLROnPlateau()]},
        TypeError,
        "float learning_rate with ReduceLROnPlateau",
    ),
    "huber-loss": (
        lambda: compiled(loss="huber"),
        {},
        ValueError,
        "loss fastnaive has: .* Received: loss='huber'",
    ),
    "label_smoothing": (
        lambda: compiled(loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1)),
        {"y": np.eye(3)[Y3]},
        ValueError,
        "without label_smoothing .* Received: label_smoothing=0.1",
    ),
    "sum-reduction": (
        lambda: compiled(loss=keras.losses.SparseCategoricalCrossentropy(reduction="sum")),
        {},
        ValueError,
        "Received: reduction='sum'",
    ),
    "ignore_class": (
        lambda: compiled(loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=0)),
        {},
        ValueError,
        "Received: ignore_class=0",
    ),
    "probabilities-as-logits": (
        lambda: compiled(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        {},
        ValueError,
        "from_logits=False for a softmax last layer",
    ),
    "logits-as-probabilities": (
        linear_head(),
        {},
        ValueError,
        "softmax last layer for loss sparse_categorical_crossentropy with from_logits=False",
    ),
    "mse-on-softmax": (
        lambda: compiled(loss="mse"),
        {"y": np.eye(3)[Y3]},
        ValueError,
        "without softmax for loss 'mean_squared_error'",
    ),
    "loss_weights": (
        lambda: compiled(loss_weights=[2.0]),
        {},
        ValueError,
        "without loss_weights",
    ),
    "weighted_metrics": (
        lambda: compiled(weighted_metrics=["accuracy"]),
        {},
        ValueError,
        "without weighted_metrics",
    ),
    "two-metrics": (
        lambda: compiled(metrics=["accuracy", "mae"]),
        {},
        ValueError,
        "one accuracy: 'accuracy' or keras.metrics.SparseCategoricalAccuracy",
    ),
    "mae-metric": (
        lambda: compiled(metrics=["mae"]),
        {},
        ValueError,
        "Received: metrics=\\['mae'\\]",
    ),
    "accuracy-with-mse": (
        linear_head(loss="mse", metrics=["accuracy"]),
        {"y": np.eye(3)[Y3]},
        ValueError,
        "no metric \\(fastnaive computes accuracy for the cross-entropies\\)",
    ),
    "binary-accuracy-on-logits": (
        lambda: compiled(
            [Input((4,)), Dense(1)],
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=["accuracy"],
        ),
        {"y": Y3 % 2},
        ValueError,
        "BinaryAccuracy\\(threshold=0.0\\) for loss binary_crossentropy with from_logits=True",
    ),
    "multi-label-accuracy": (
        lambda: compiled(
            [Input((4,)), Dense(3, activation="sigmoid")],
            loss="binary_crossentropy",
            metrics=["accuracy"],
        ),
        {"y": np.eye(3)[Y3]},
        ValueError,
        "BinaryAccuracy\\(threshold=0.5\\) for loss binary_crossentropy",
    ),
    "categorical-accuracy-for-sparse-labels": (
        lambda: compiled(metrics=[keras.metrics.CategoricalAccuracy()]),
        {},
        ValueError,
        "SparseCategoricalAccuracy for loss sparse_categorical_crossentropy",
    ),
    "terminate-on-nan": (
        compiled,
        {"callbacks": [keras.callbacks.TerminateOnNaN()]},
        TypeError,
        "Received: callbacks\\[0\\] of type TerminateOnNaN",
    ),
    "own-callback": (
        compiled,
        {"callbacks": [keras.callbacks.History(), PrintingCallback()]},
        TypeError,
        "others may change training\\). Received: callbacks\\[1\\] of type PrintingCallback",
    ),
    "fastnaive-callback": (
        compiled,
        {"callbacks": fastnaive.callbacks.History()},
        TypeError,
        "Received: callbacks\\[0\\] of type History",
    ),
    "steps_per_epoch": (compiled, {"steps_per_epoch": 2}, ValueError, "steps_per_epoch=2"),
    "validation_steps": (compiled, {"validation_steps": 2}, ValueError, "validation_steps=2"),
    "several-inputs": (compiled, {"x": [X4, X4]}, TypeError, "Received: x of type list"),
    "generator": (
        compiled,
        {"x": (row for row in X4)},
        TypeError,
        "no datasets, generators or several inputs. Received: x of type generator",
    ),
    "no-labels": (compiled, {"y": None}, TypeError, "Received: y of type NoneType"),
    "input-shape": (
        compiled,
        {"x": X4.reshape(10, 2, 2)},
        ValueError,
        "Expected x of shape \\(n_samples, 4\\).* Received: x.shape=\\(10, 2, 2\\)",
    ),
    "validation-input-shape": (
        compiled,
        {"validation_data": (X4[:, :3], Y3)},
        ValueError,
        "Received: validation_data\\[0\\].shape=\\(10, 3\\)",
    ),
    "class_weight-and-sample_weight": (
        compiled,
        {"class_weight": {0: 2.0}, "sample_weight": np.ones(10)},
        ValueError,
        "class_weight or sample_weight, not both",
    ),
    "validation_split-leaving-nothing": (
        compiled,
        {"validation_split": 0.95},
        ValueError,
        "validation_split=0.95 of 10 samples",
    ),
    "verbose": (compiled, {"verbose": 3}, ValueError, "Received: verbose=3"),
    "shuffle-batch": (compiled, {"shuffle": "batch"}, TypeError, "Received: shuffle='batch'"),
    "validation_freq": (compiled, {"validation_freq": 0}, ValueError, "validation_freq=0"),
    "labels-out-of-range": (compiled, {"y": Y3 + 1}, ValueError, "Expected labels in \\[0, 3\\)"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refuses_before_training_what_it_cannot_translate(case):
    make_model, kwargs, error, message = REFUSALS[case]
    model = make_model()
    weights = model.get_weights()
    with pytest.raises(error, match=message):
        fast_fit(model, **{"x": X4, "y": Y3, "verbose": 0, **kwargs})
    for after, before in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(after, before)
    if getattr(model, "optimizer", None) is not None:
        assert not model.optimizer.built


# optimizer_from_keras


def test_optimizer_from_keras_translates_the_settings_keras_uses():
    sgd = optimizer_from_keras(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    assert isinstance(sgd, fastnaive.SGD) and sgd.nesterov
    # Keras keeps the rate in a float32 variable and casts momentum through a float32.
    assert sgd.learning_rate == float(np.float32(0.1)) != 0.1
    assert sgd.momentum == float(np.float32(0.9))
    adam = optimizer_from_keras(keras.optimizers.Adam(2e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6))
    assert isinstance(adam, fastnaive.Adam)
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon) == (
        float(np.float32(2e-3)),
        0.8,
        0.99,
        1e-6,
    )
    assert optimizer_from_keras(keras.optimizers.SGD(weight_decay=0.0)).momentum == 0


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_optimizer_from_keras_takes_the_state_and_steps_as_keras(kind, rng):
    """Three Keras steps, then the translated optimizer's fourth step on copies of the
    weights is Keras' fourth step."""
    settings = {"SGD": dict(learning_rate=0.1, momentum=0.9), "Adam": dict(learning_rate=0.01)}
    keras_optimizer = getattr(keras.optimizers, kind)(**settings[kind])
    variables = [
        keras.Variable(rng.standard_normal(shape).astype("float32")) for shape in ((5, 3), (3,))
    ]
    gradients = [
        [rng.standard_normal(v.shape).astype("float32") for v in variables] for _ in range(4)
    ]
    for step in gradients[:3]:
        keras_optimizer.apply_gradients(zip(step, variables))
    optimizer = optimizer_from_keras(keras_optimizer)
    assert optimizer.iterations == 3
    state = optimizer.get_state()["slots"]
    assert len(state) == 2 and all(len(slot) == optimizer.n_slots for slot in state)
    weights = [v.numpy() for v in variables]
    optimizer.apply_gradients(zip(gradients[3], weights))
    keras_optimizer.apply_gradients(zip(gradients[3], variables))
    for actual, variable in zip(weights, variables):
        np.testing.assert_allclose(actual, variable.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "keras_optimizer, error, message",
    [
        (lambda: keras.optimizers.RMSprop(), TypeError, "Received: optimizer=RMSprop"),
        (lambda: keras.optimizers.SGD(clipnorm=1.0), ValueError, "without clipnorm"),
        (
            lambda: keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 5, 0.5)),
            TypeError,
            "float learning_rate .* Received: learning_rate=ExponentialDecay",
        ),
    ],
)
def test_optimizer_from_keras_refuses_naming_the_setting(keras_optimizer, error, message):
    with pytest.raises(error, match=message):
        optimizer_from_keras(keras_optimizer())


# accelerate, and fit's edges


def test_accelerate_fit_has_keras_signature_and_the_rest_is_the_keras_model(rng):
    model = compiled(metrics=["accuracy"])
    twin = compiled(metrics=["accuracy"])
    twin.set_weights(model.get_weights())
    fast = accelerate(model)
    assert inspect.signature(fast.fit) == inspect.signature(model.fit)
    assert fast.layers[0] is model.layers[0] and fast.optimizer is model.optimizer
    np.testing.assert_array_equal(fast.predict(X4, verbose=0), model.predict(X4, verbose=0))
    np.testing.assert_array_equal(fast(X4), model(X4))
    fast.stop_training = True
    assert model.stop_training is True
    history = fast.fit(X4, Y3, batch_size=4, epochs=2, shuffle=False, verbose=0)
    twin_history = fast_fit(twin, X4, Y3, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert history.history == twin_history.history and history.params == twin_history.params
    assert list(history.history) == ["accuracy", "loss"]  # as Keras orders them
    for actual, expected in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(actual, expected)
    with pytest.raises(TypeError, match="Received: NaiveSequential"):
        accelerate(fastnaive.NaiveSequential([fastnaive.NaiveDense(4, 3, "softmax")]))


def test_a_stopped_fit_leaves_the_last_finite_weights_in_the_keras_model():
    x, y, _, _ = cancer_data(None)
    x = x.copy()
    x[45, 3] = np.nan  # batch 2 of 20
    model, twin = twins(*ADAM_ON_CANCER)
    with pytest.raises(FloatingPointError, match="epoch 0, batch 2"):
        fast_fit(model, x, y, batch_size=20, shuffle=False, verbose=0)
    fast_fit(twin, x[:40], y[:40], batch_size=20, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == int(twin.optimizer.iterations) == 2
    for actual, expected in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_verbose_prints_keras_progress(capsys):
    fast_fit(compiled(), X4, Y3, batch_size=4, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert len(re.findall(r"3/3 - .* - loss: \d\.\d{4}", out)) == 2


def test_shuffle_draws_another_order_repeatably_under_keras_seed():
    """shuffle=True trains in fastnaive's orders (not Keras'), drawn from NumPy's generator
    that keras.utils.set_random_seed seeds."""
    models = [compiled() for _ in range(3)]
    for model in models[1:]:
        model.set_weights(models[0].get_weights())
    for model, shuffle in zip(models, (True, True, False)):
        keras.utils.set_random_seed(7)
        fast_fit(model, X4, Y3, batch_size=3, epochs=2, shuffle=shuffle, verbose=0)
    first, again, unshuffled = (model.get_weights()[0] for model in models)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, unshuffled)
