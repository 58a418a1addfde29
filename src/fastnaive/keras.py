"""fastnaive and Keras: model conversion, Keras optimizers, and Keras' fit on fastnaive's engine.

- to_keras / from_keras convert between NaiveSequential and keras.Sequential models of Dense
  and Dropout layers;
- optimizer_from_keras translates a Keras SGD or Adam (and its state) to fastnaive's;
- fit(keras_model, x, y, ...) and accelerate(keras_model).fit(x, y, ...) train a compiled
  keras.Sequential on fastnaive's engine, with Keras' arguments, callbacks and History, and
  leave the trained weights in the Keras model.

Keras is imported inside the functions, so importing this module does not import
TensorFlow or Keras.
"""

import inspect
import math

import numpy as np

from fastnaive import activations, keras_optimizers
from fastnaive.callbacks import Callback
from fastnaive.keras_optimizers import optimizer_from_keras
from fastnaive.layers import Dropout, NaiveDense
from fastnaive.models import NaiveSequential

__all__ = ["to_keras", "from_keras", "optimizer_from_keras", "fit", "accelerate"]

_DTYPES = ("float32", "float64")


def to_keras(model):
    """Return a keras.Sequential of Dense (and Dropout) layers with `model`'s weights,
    activations, L2 penalties, dropout rates and dtype (not compiled)."""
    import functools

    import keras

    if not isinstance(model, NaiveSequential):
        raise TypeError(f"Expected model to be a NaiveSequential. Received: {type(model).__name__}")
    model.check_weights()
    dtype = model.dtype.name
    layers = []
    for layer in model.layers:
        if isinstance(layer, Dropout):
            layers.append(keras.layers.Dropout(layer.rate, seed=layer.seed % 2**31, dtype=dtype))
            continue
        activation = layer.activation or "linear"
        if activation == "gelu_tanh":
            activation = functools.partial(keras.activations.gelu, approximate=True)
        regularizer = keras.regularizers.L2(layer.l2) if layer.l2 else None
        layers.append(
            keras.layers.Dense(
                layer.output_size,
                activation=activation,
                dtype=dtype,
                kernel_regularizer=regularizer,
            )
        )
    keras_model = keras.Sequential([keras.Input((model.input_size,), dtype=dtype), *layers])
    keras_model.set_weights(model.get_weights())
    return keras_model


def from_keras(keras_model):
    """Return a NaiveSequential with the weights of a keras.Sequential of Dense layers.

    The Sequential must be built, hold Dense layers with use_bias=True, an activation
    fastnaive has (fastnaive.activations; softmax on the last layer only) and at most an L2
    kernel regularizer, each optionally followed by a Dropout, all of dtype policy float32
    or all float64, and may start with a channels_last Flatten.
    """
    import keras

    if not isinstance(keras_model, keras.Sequential):
        raise TypeError(
            f"Expected keras_model to be a keras.Sequential. Received: {type(keras_model).__name__}"
        )
    layers = _dense_layers(keras_model)
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    dtype = dense[0].dtype_policy.name
    converted = [
        Dropout(layer.rate, seed=layer.seed)
        if isinstance(layer, keras.layers.Dropout)
        else _naive_dense(layer, dtype, last=layer is dense[-1])
        for layer in layers
    ]
    model = NaiveSequential(converted)
    model.set_weights(
        [keras.ops.convert_to_numpy(w) for layer in dense for w in (layer.kernel, layer.bias)]
    )
    return model


def _dense_layers(keras_model):
    """Return the Dense layers of a built Sequential, after checking what precedes them."""
    import keras

    try:
        input_shape = keras_model.input_shape
    except AttributeError as exc:
        raise ValueError(
            "Expected a built keras.Sequential (start it with keras.Input or call "
            f"build()). Received: {keras_model.name!r} with no input shape"
        ) from exc
    layers = list(keras_model.layers)
    if layers and isinstance(layers[0], keras.layers.Flatten):
        flatten = layers.pop(0)
        if flatten.data_format != "channels_last":
            raise _unsupported(
                flatten,
                "a Flatten with data_format='channels_last'",
                f"data_format={flatten.data_format!r}",
            )
    elif len(input_shape) != 2:
        raise ValueError(
            f"Expected inputs of shape (batch, n_features), or a Flatten first. "
            f"Received: {keras_model.name!r} with input_shape={input_shape}"
        )
    if not layers:
        raise ValueError(
            f"Expected at least one Dense layer. Received: {keras_model.name!r} with none"
        )
    for previous, layer in zip([None, *layers], layers):
        dropout_after_dense = (
            isinstance(layer, keras.layers.Dropout)
            and isinstance(previous, keras.layers.Dense)
            and layer is not layers[-1]
        )
        if not (isinstance(layer, keras.layers.Dense) or dropout_after_dense):
            raise _unsupported(
                layer,
                "only Dense layers, each optionally followed by a Dropout (not last), after an "
                "optional leading Flatten",
                f"type {type(layer).__name__}",
            )
    return layers


def _naive_dense(layer, dtype, last):
    """Return a NaiveDense shaped like the Keras Dense `layer`, or raise naming what differs."""
    policy = layer.dtype_policy.name
    if policy not in _DTYPES:
        raise _unsupported(layer, "dtype policy float32 or float64", f"dtype policy {policy}")
    if policy != dtype:
        raise _unsupported(
            layer,
            f"every layer of dtype policy {dtype}, the first layer's",
            f"dtype policy {policy}",
        )
    if not layer.use_bias:
        raise _unsupported(layer, "Dense layers with use_bias=True", "use_bias=False")
    try:
        activation = activations.resolve(layer.activation)
    except ValueError:
        name = getattr(layer.activation, "__name__", repr(layer.activation))
        raise _unsupported(
            layer, "an activation of fastnaive.activations", f"activation {name}"
        ) from None
    if activation == "softmax" and not last:
        raise _unsupported(layer, "softmax only on the last layer", "activation softmax")
    n_features, n_units = layer.kernel.shape
    return NaiveDense(n_features, n_units, activation, dtype=dtype, l2=_l2(layer))


def _l2(layer):
    """The L2 weight of a Dense layer's kernel regularizer (0 for none), or raise."""
    import keras

    if layer.bias_regularizer is not None or layer.activity_regularizer is not None:
        raise _unsupported(layer, "no bias or activity regularizer", "one")
    regularizer = layer.kernel_regularizer
    if regularizer is None:
        return 0.0
    if isinstance(regularizer, keras.regularizers.L2):
        return float(regularizer.l2)
    if isinstance(regularizer, keras.regularizers.L1L2) and not regularizer.l1:
        return float(regularizer.l2)
    raise _unsupported(layer, "an L2 kernel regularizer", f"{type(regularizer).__name__}")


def _unsupported(layer, expected, received):
    """Return the ValueError for a Keras layer that fastnaive cannot represent."""
    return ValueError(f"Expected {expected}. Received: layer {layer.name!r} with {received}")


# ---- Keras losses and metrics ----------------------------------------------------------

# Keras' loss classes -> the fastnaive loss of the same name.
_LOSS_CLASSES = {
    "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy",
    "CategoricalCrossentropy": "categorical_crossentropy",
    "BinaryCrossentropy": "binary_crossentropy",
    "MeanSquaredError": "mean_squared_error",
}
# Loss settings accepted at these values only.
_INERT_LOSS_SETTINGS = {
    "reduction": "sum_over_batch_size",
    "label_smoothing": 0,
    "axis": -1,
    "ignore_class": None,
}
_SUPPORTED_LOSSES = (
    "sparse_categorical_crossentropy, categorical_crossentropy, binary_crossentropy or "
    "mean_squared_error, as a name, a keras.losses function or a keras.losses object"
)
# The head each cross-entropy takes probabilities from when from_logits=False.
_HEADS = {
    "sparse_categorical_crossentropy": "softmax",
    "categorical_crossentropy": "softmax",
    "binary_crossentropy": "sigmoid",
}
# The Keras accuracy that agrees with fastnaive's for each loss.
_ACCURACIES = {
    "sparse_categorical_crossentropy": "sparse_categorical_accuracy",
    "categorical_crossentropy": "categorical_accuracy",
    "binary_crossentropy": "binary_accuracy",
}
_ACCURACY_CLASSES = {
    "SparseCategoricalAccuracy": "sparse_categorical_accuracy",
    "CategoricalAccuracy": "categorical_accuracy",
    "BinaryAccuracy": "binary_accuracy",
}


def _compiled_loss(keras_model, y, n_outputs):
    """(fastnaive loss name, from_logits) of a compiled model's loss, or raise naming it."""
    import keras

    loss = keras_model.loss
    if isinstance(loss, str) and loss.lower() in ("crossentropy", "ce"):
        # Keras picks the cross-entropy from the shapes, as below.
        if n_outputs == 1:
            return "binary_crossentropy", False
        sparse = np.ndim(y) < 2 or np.shape(y)[-1] == 1
        return ("sparse_" if sparse else "") + "categorical_crossentropy", False
    refused = ValueError(
        f"Expected the model compiled with a loss fastnaive has: {_SUPPORTED_LOSSES}. "
        f"Received: loss={loss!r}"
    )
    if isinstance(loss, str):
        try:
            loss = keras.losses.get(loss)
        except (TypeError, ValueError):
            raise refused from None
    functions = {getattr(keras.losses, name): name for name in _LOSS_CLASSES.values()}
    if not isinstance(loss, keras.losses.Loss):
        if loss not in functions:
            raise refused
        return functions[loss], False
    name = type(loss).__name__
    if type(loss) is not getattr(keras.losses, name, None) or name not in _LOSS_CLASSES:
        raise refused
    config = loss.get_config()
    for key, value in config.items():
        if key not in ("name", "from_logits", "dtype") and not (
            key in _INERT_LOSS_SETTINGS and value == _INERT_LOSS_SETTINGS[key]
        ):
            raise ValueError(
                f"Expected a Keras {name} without {key} (fastnaive computes the plain "
                f"loss, averaged over the batch). Received: {key}={value!r}"
            )
    return _LOSS_CLASSES[name], bool(config.get("from_logits", False))


def _check_head(loss, from_logits, head):
    """Refuse a last activation that the loss would not treat as fastnaive does."""
    absorbed = _HEADS.get(loss)
    if absorbed is None:
        return
    if from_logits and head in ("softmax", "sigmoid"):
        raise ValueError(
            f"Expected from_logits=False for a {head} last layer (its outputs are "
            f"probabilities, not logits). Received: loss {loss} with from_logits=True"
        )
    if not from_logits and head != absorbed:
        raise ValueError(
            f"Expected a {absorbed} last layer for loss {loss} with from_logits=False, or "
            f"from_logits=True. Received: a last layer with activation {head or 'linear'}"
        )


def _compiled_metric(keras_model, loss, from_logits, y, n_outputs):
    """The name Keras logs the compiled accuracy under (None without one), after checking
    that it is the accuracy fastnaive computes for the loss."""
    import keras

    config = keras_model.get_compile_config()
    for key in ("loss_weights", "weighted_metrics"):
        if config.get(key):
            raise ValueError(
                f"Expected a model compiled without {key}. Received: {key}={config[key]!r}"
            )
    metrics = config.get("metrics") or []
    metrics = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
    expected = _ACCURACIES.get(loss)
    threshold = 0.0 if from_logits else 0.5
    wanted = (
        f"no metric, or one accuracy: 'accuracy' or keras.metrics."
        f"{expected.title().replace('_', '')}"
        + (f"(threshold={threshold})" if expected == "binary_accuracy" else "")
        if expected
        else "no metric (fastnaive computes accuracy for the cross-entropies)"
    )
    if not metrics:
        return None
    if len(metrics) > 1 or expected is None:
        raise ValueError(f"Expected {wanted} for loss {loss}. Received: metrics={metrics!r}")
    (entry,) = metrics
    if isinstance(entry, str) and entry.lower() in ("accuracy", "acc"):
        # Keras picks the accuracy from the shapes of the targets and outputs.
        if n_outputs == 1:
            kind = "binary_accuracy"
        elif np.ndim(y) < 2 or np.shape(y)[-1] == 1:
            kind = "sparse_categorical_accuracy"
        else:
            kind = "categorical_accuracy"
        name, metric_threshold = entry, 0.5
    else:
        try:
            metric = keras.metrics.get(entry)
        except (TypeError, ValueError):
            metric = None
        kinds = {getattr(keras.metrics, kind): kind for kind in _ACCURACY_CLASSES.values()}
        if isinstance(metric, keras.metrics.Metric):
            class_name = type(metric).__name__
            is_keras = type(metric) is getattr(keras.metrics, class_name, None)
            kind = _ACCURACY_CLASSES.get(class_name) if is_keras else None
            name, metric_threshold = metric.name, getattr(metric, "threshold", 0.5)
        else:
            kind = kinds.get(metric)
            name, metric_threshold = getattr(metric, "__name__", None), 0.5
    if kind != expected or (kind == "binary_accuracy" and metric_threshold != threshold):
        raise ValueError(
            f"Expected {wanted} for loss {loss} with from_logits={from_logits}. "
            f"Received: metrics={metrics!r}"
        )
    return name


# ---- Keras' fit on fastnaive's engine --------------------------------------------------

# The Keras callbacks fit runs: they read the logs and the model, or (the last two) set the
# optimizer's learning rate between epochs, which fit passes on to fastnaive's optimizer.
_CALLBACKS = (
    "History",
    "ProgbarLogger",
    "EarlyStopping",
    "CSVLogger",
    "ModelCheckpoint",
    "LambdaCallback",
    "LearningRateScheduler",
    "ReduceLROnPlateau",
)
_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


def fit(
    keras_model,
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
):
    """Train a compiled keras.Sequential as `keras_model.fit(x, y, ...)` would, on fastnaive's
    engine; return the keras.callbacks.History, with Keras' keys.

    The model: Input, an optional leading Flatten, Dense layers (each optionally followed by
    a Dropout) as fastnaive.keras.from_keras takes them, all trainable, without constraints.
    Read from its compile(): the optimizer (optimizer_from_keras; a learning rate of
    keras.optimizers.schedules is followed step by step), the loss (sparse_categorical_,
    categorical_ and binary_crossentropy with from_logits, mean_squared_error; names,
    functions or objects) and at most one metric, the accuracy that fastnaive computes for
    the loss ('accuracy', 'acc' or its keras.metrics name or object).

    The arguments are Keras' with Keras' defaults (batch_size None is 32). x and y are
    arrays (or tensors, or a scipy.sparse x). validation_split takes the last samples as
    Keras does; validation_data is (x, y) or (x, y, sample_weight); class_weight and
    sample_weight weight the loss as Keras does; epochs are numbered from initial_epoch.
    Callbacks: History, ProgbarLogger, EarlyStopping, CSVLogger, ModelCheckpoint,
    LambdaCallback, and LearningRateScheduler and ReduceLROnPlateau (the learning rate they
    set is used from the next step on). They see the Keras model, holding the trained
    weights (and the optimizer its state) at every epoch's end and the end of training, and
    at every batch for those that read the model per batch (a ModelCheckpoint with an
    integer save_freq, a LambdaCallback with batch hooks).

    Afterwards the Keras model's variables hold the trained weights and its optimizer the
    iteration count and state, also when training stops with an error: Keras' own fit, or
    this one, continues from them.

    Differences from Keras: shuffle=True draws fastnaive's orders (from NumPy's global
    generator, so keras.utils.set_random_seed makes them repeatable), not Keras'; with
    shuffle=False both see the same batches and end with the same weights to float
    tolerance. Dropout draws fastnaive's masks, not Keras'. Batch logs carry the running
    mean "loss" only. Validation runs in one pass (validation_batch_size is not used) and
    every epoch, its logs kept at the epochs validation_freq names. Refused before training,
    naming the cause: other layers, losses, metrics, optimizers and callbacks,
    steps_per_epoch, validation_steps, datasets, generators and several inputs.
    """
    run = _KerasFit(keras_model)
    run.use_data(x, y, sample_weight, class_weight, validation_split, validation_data)
    run.use_settings(batch_size, epochs, initial_epoch, verbose, shuffle, validation_freq)
    for name, value in (
        ("steps_per_epoch", steps_per_epoch),
        ("validation_steps", validation_steps),
    ):
        if value is not None:
            raise ValueError(
                f"Expected {name}=None: fastnaive.keras.fit trains on arrays, a whole pass per "
                f"epoch. Received: {name}={value!r}"
            )
    run.use_optimizer_and_callbacks(callbacks)
    return run.train()


class _KerasFit:
    """keras.fit's model and arguments, checked and converted once, and the training."""

    def __init__(self, keras_model):
        import keras

        if not isinstance(keras_model, keras.Sequential):
            raise TypeError(
                f"Expected keras_model to be a compiled keras.Sequential. Received: "
                f"{type(keras_model).__name__}"
            )
        if not keras_model.compiled:
            raise ValueError(
                f"Expected a compiled keras.Sequential (call compile() first). Received: "
                f"{keras_model.name!r}, not compiled"
            )
        self.keras_model = keras_model
        self.dense = [
            layer for layer in keras_model.layers if isinstance(layer, keras.layers.Dense)
        ]
        self.converted = from_keras(keras_model)
        _check_trainable(keras_model)
        self.keras_optimizer = keras_model.optimizer
        translated = keras_optimizers.optimizer_settings(self.keras_optimizer)
        self.optimizer_class, self.settings = translated

    def use_data(self, x, y, sample_weight, class_weight, validation_split, validation_data):
        """Check and convert the data; read the loss and metric, which depend on it."""
        x, y = _array(x, "x"), _array(y, "y")
        _check_input_shape(self.keras_model, x, "x")
        n_outputs = self.converted.output_size
        loss, from_logits = _compiled_loss(self.keras_model, y, n_outputs)
        _check_head(loss, from_logits, self.converted.dense_layers[-1].activation)
        self.model = NaiveSequential(self.converted.layers, loss=loss)
        self.metric = _compiled_metric(self.keras_model, loss, from_logits, y, n_outputs)
        if class_weight is not None and sample_weight is not None:
            raise ValueError(
                "Expected class_weight or sample_weight, not both (Keras refuses both). "
                "Received: class_weight and sample_weight"
            )
        self.class_weight = class_weight
        sample_weight = None if sample_weight is None else _array(sample_weight, "sample_weight")
        self.x, self.y, self.sample_weight, validation = _keras_split(
            x, y, sample_weight, validation_data, validation_split
        )
        if validation is not None:
            _check_input_shape(self.keras_model, validation[0], "validation_data[0]")
        if self.model.loss.sparse_labels:
            self.y = _as_class_indices(self.y)
            if validation is not None:
                validation = (validation[0], _as_class_indices(validation[1]), *validation[2:])
        self.validation = validation

    def use_settings(self, batch_size, epochs, initial_epoch, verbose, shuffle, validation_freq):
        from fastnaive._validation import positive_int

        self.batch_size = 32 if batch_size is None else positive_int(batch_size, "batch_size")
        self.epochs = positive_int(epochs, "epochs", minimum=0)
        self.initial_epoch = positive_int(initial_epoch, "initial_epoch", minimum=0)
        if verbose not in ("auto", 0, 1, 2) or isinstance(verbose, bool):
            raise ValueError(f"Expected verbose 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
        self.verbose = verbose
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"Expected shuffle to be True or False. Received: shuffle={shuffle!r}")
        self.shuffle = bool(shuffle)
        self.validation_freq = _checked_validation_freq(validation_freq)
        self.steps = math.ceil(self.x.shape[0] / self.batch_size)

    def use_optimizer_and_callbacks(self, callbacks):
        """Translate the compiled optimizer, with its state and schedule; check the callbacks."""
        import keras

        settings = self.settings
        self.callbacks = _checked_callbacks(callbacks)
        schedule = settings["learning_rate"]
        self.rates = None
        if not isinstance(schedule, float):
            for callback in self.callbacks:
                if type(callback).__name__ in ("LearningRateScheduler", "ReduceLROnPlateau"):
                    raise TypeError(
                        f"Expected a float learning_rate with {type(callback).__name__}, "
                        f"which sets it. Received: learning_rate={type(schedule).__name__}"
                    )
            first_step = int(keras.ops.convert_to_numpy(self.keras_optimizer.iterations))
            n_steps = self.steps * max(self.epochs - self.initial_epoch, 0)
            self.rates = keras_optimizers.schedule_rates(schedule, first_step, n_steps)
            settings["learning_rate"] = float(self.rates[0]) if n_steps else 1.0
        self.optimizer = self.optimizer_class(**settings)
        keras_optimizers.load_optimizer_state(self.optimizer, self.keras_optimizer)
        self.first_iteration = self.optimizer.iterations
        self.batch_reads_model = any(_reads_model_per_batch(c) for c in self.callbacks)
        # The other callbacks fit runs do nothing per batch but ProgbarLogger: the batch hooks
        # (a fifth of a step's time on MNIST) are passed on only when one of those is there.
        self.batch_hooks = (
            self.batch_reads_model
            or self.verbose != 0
            or any(isinstance(c, keras.callbacks.ProgbarLogger) for c in self.callbacks)
        )

    def train(self):
        """Run fastnaive's fit with the Keras callbacks; return the History."""
        import keras

        from fastnaive import training

        history = next((c for c in self.callbacks if isinstance(c, keras.callbacks.History)), None)
        if history is None:
            history = keras.callbacks.History()
        callbacks = self.callbacks + ([] if history in self.callbacks else [history])
        callback_list = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=self.verbose != 0,
            model=self.keras_model,
            verbose=self.verbose,
            epochs=self.epochs,
            steps=self.steps,
        )
        native_initial_epoch = "initial_epoch" in inspect.signature(training.fit).parameters
        self.epoch_offset = 0 if native_initial_epoch else self.initial_epoch
        extra = {"initial_epoch": self.initial_epoch} if native_initial_epoch else {}
        adapter = _KerasCallbacks(self, callback_list)
        try:
            training.fit(
                self.model,
                self.x,
                self.y,
                self.epochs - self.epoch_offset if self.epochs > self.epoch_offset else 0,
                self.batch_size,
                optimizer=self.optimizer,
                sample_weight=self.sample_weight,
                class_weight=self.class_weight,
                shuffle=self.shuffle,
                seed=int(np.random.randint(2**31 - 1)) if self.shuffle else None,
                validation_data=self.validation,
                verbose=0,
                callbacks=[adapter],
                **extra,
            )
        finally:
            adapter.copy_if_changed()
        return history

    def copy_to_keras(self):
        """Copy the trained weights into the Keras model and the optimizer's state into its
        optimizer."""
        for layer, dense in zip(self.dense, self.model.dense_layers):
            layer.kernel.assign(dense.W)
            layer.bias.assign(dense.b)
        keras_optimizers.store_optimizer_state(
            self.optimizer, self.keras_optimizer, self.keras_model.trainable_variables
        )

    def learning_rate_from_keras(self):
        """Take up a learning rate that a callback set on the Keras optimizer."""
        import keras

        if self.rates is None:
            rate = float(keras.ops.convert_to_numpy(self.keras_optimizer.learning_rate))
            if rate != self.optimizer.learning_rate:
                self.optimizer.learning_rate = rate

    def schedule_step(self):
        """Set the scheduled learning rate of the coming step."""
        if self.rates is not None:
            step = self.optimizer.iterations - self.first_iteration
            if step < len(self.rates):
                self.optimizer.learning_rate = float(self.rates[step])

    def keras_logs(self, logs, epoch=None):
        """fastnaive's logs under Keras' keys: the loss, the compiled metric's name for the
        accuracy (dropped without one), validation kept at the epochs validation_freq names."""
        validating = epoch is None or self.validation_freq(epoch)
        renamed = {}
        for key, value in logs.items():
            prefix = "val_" if key.startswith("val_") else ""
            name = key[len(prefix) :]
            name = "loss" if name == "loss" else self.metric if name == "accuracy" else None
            if name is not None and (validating or not prefix):
                renamed[prefix + name] = value
        return renamed


class _KerasCallbacks(Callback):
    """Keras callbacks run from fastnaive's loop: every hook is passed on to a Keras
    CallbackList, with Keras' epoch numbers, keys and running batch means, and the Keras model
    updated first where a callback may read it."""

    writes_weights = False  # the weights are fastnaive's own arrays, read only

    def __init__(self, run, callbacks):
        self.run, self.callbacks = run, callbacks
        self.logs = None
        self.changed = False
        # Whether the loop calls on_train_batch_begin itself; until it does, it is called
        # here before each step, after the previous batch's end.
        self.loop_begins_batches = False
        self.epoch, self.begun, self.ended = 0, -1, -1

    def copy_if_changed(self):
        if self.changed:
            self.run.copy_to_keras()
            self.changed = False

    def on_train_begin(self, logs=None):
        self.run.keras_model.stop_training = False
        self.callbacks.on_train_begin()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + self.run.epoch_offset
        self.begun = self.ended = -1
        self.callbacks.on_epoch_begin(self.epoch)
        self.run.learning_rate_from_keras()
        self.begin_batch(0)

    def on_train_batch_begin(self, batch, logs=None):
        self.loop_begins_batches = True
        if batch != self.begun:
            self.begin_batch(batch)

    def begin_batch(self, batch):
        self.begun = batch
        self.run.schedule_step()
        if self.run.batch_hooks:
            if self.run.batch_reads_model:
                self.copy_if_changed()
            self.callbacks.on_train_batch_begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.ended:  # the loop may call both on_batch_end and this
            return
        self.ended, self.changed = batch, True
        if self.run.batch_hooks:
            # fastnaive's batch logs hold Keras' running means already, and the batch's own loss.
            means = {k: v for k, v in (logs or {}).items() if k != "batch_loss"}
            running = self.run.keras_logs(means)
            if self.run.batch_reads_model:
                self.copy_if_changed()
            self.callbacks.on_train_batch_end(batch, running)
        if not self.loop_begins_batches and batch + 1 < self.run.steps:
            self.begin_batch(batch + 1)

    on_batch_end = on_train_batch_end

    def on_epoch_end(self, epoch, logs=None):
        self.copy_if_changed()
        self.logs = self.run.keras_logs(logs or {}, self.epoch)
        self.callbacks.on_epoch_end(self.epoch, self.logs)
        if self.run.keras_model.stop_training:
            self.model.stop_training = True
        self.run.learning_rate_from_keras()

    def on_train_end(self, logs=None):
        self.copy_if_changed()
        self.callbacks.on_train_end(self.logs)


def _array(value, name):
    """`value` as a NumPy array (a scipy.sparse matrix as it is), or raise for datasets,
    generators and structures of several arrays."""
    if callable(getattr(value, "tocsr", None)) and not isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple, dict)) or not (
        isinstance(value, np.ndarray) or hasattr(value, "__array__")
    ):
        raise TypeError(
            f"Expected {name} as one array (NumPy, a tensor or, for x, a scipy.sparse matrix); "
            f"fastnaive.keras.fit takes no datasets, generators or several inputs. "
            f"Received: {name} of type {type(value).__name__}"
        )
    return np.asarray(value)


def _as_class_indices(y):
    """Class indices as integers: float labels holding whole numbers are converted."""
    if y.dtype.kind == "f" and y.size and np.array_equal(y, np.floor(y)):
        return y.astype(np.int64)
    return y


def _check_input_shape(keras_model, x, name):
    expected = tuple(keras_model.input_shape[1:])
    shape = tuple(x.shape[1:])
    if len(shape) != len(expected) or any(e not in (None, s) for e, s in zip(expected, shape)):
        raise ValueError(
            f"Expected {name} of shape (n_samples, {', '.join(map(str, expected))}), the "
            f"model's input shape. Received: {name}.shape={tuple(x.shape)}"
        )


def _check_trainable(keras_model):
    """Refuse what fastnaive would train differently: frozen layers, weight constraints,
    LoRA, Dropout noise shapes."""
    import keras

    for layer in [keras_model, *keras_model.layers]:
        received = None
        if not layer.trainable:
            received = "trainable=False"
        elif isinstance(layer, keras.layers.Dense):
            if layer.kernel_constraint is not None or layer.bias_constraint is not None:
                received = "a kernel or bias constraint"
            elif getattr(layer, "lora_enabled", False):
                received = "LoRA enabled"
        elif isinstance(layer, keras.layers.Dropout) and layer.noise_shape is not None:
            received = f"noise_shape={layer.noise_shape}"
        if received:
            raise ValueError(
                f"Expected trainable layers without constraints, LoRA or Dropout noise "
                f"shapes (fastnaive trains plain Dense layers). Received: layer "
                f"{layer.name!r} with {received}"
            )


def _checked_validation_freq(validation_freq):
    """A function of the epoch: whether Keras validates after it."""
    if isinstance(validation_freq, int) and not isinstance(validation_freq, bool):
        if validation_freq >= 1:
            return lambda epoch: (epoch + 1) % validation_freq == 0
    elif isinstance(validation_freq, (list, tuple)):
        return lambda epoch: epoch + 1 in validation_freq
    raise ValueError(
        f"Expected validation_freq an integer >= 1 or a list of epochs. "
        f"Received: validation_freq={validation_freq!r}"
    )


def _keras_split(x, y, sample_weight, validation_data, validation_split):
    """(x, y, sample_weight, validation (x, y[, sample_weight]) or None) as Keras splits them:
    validation_data wins over validation_split, which takes the last samples."""
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
            raise ValueError(
                "Expected validation_data=(x, y) or (x, y, sample_weight) of arrays. "
                f"Received: validation_data of type {type(validation_data).__name__}"
            )
        names = ("validation_data[0]", "validation_data[1]", "validation_data[2]")
        validation = tuple(
            None if value is None else _array(value, name)
            for value, name in zip(validation_data, names)
        )
        return x, y, sample_weight, validation if validation[-1] is not None else validation[:2]
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, (int, float, np.floating, np.integer))
        or not 0 <= validation_split < 1
    ):
        raise ValueError(f"Expected validation_split in [0, 1). Received: {validation_split!r}")
    if not validation_split:
        return x, y, sample_weight, None
    n = x.shape[0]
    cut = int(math.floor(n * (1.0 - validation_split)))
    if cut in (0, n):
        raise ValueError(
            f"Expected validation_split to leave samples on both sides. Received: "
            f"validation_split={validation_split} of {n} samples"
        )
    if sample_weight is None:
        return x[:cut], y[:cut], None, (x[cut:], y[cut:])
    return x[:cut], y[:cut], sample_weight[:cut], (x[cut:], y[cut:], sample_weight[cut:])


def _checked_callbacks(callbacks):
    """The Keras callbacks as a list, each of a class fit runs."""
    import keras

    if callbacks is None:
        return []
    callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    classes = [getattr(keras.callbacks, name) for name in _CALLBACKS]
    for i, callback in enumerate(callbacks):
        if type(callback) not in classes:
            raise TypeError(
                f"Expected callbacks of keras.callbacks.{', '.join(_CALLBACKS)} (fastnaive runs "
                f"those; others may change training). Received: callbacks[{i}] of type "
                f"{type(callback).__name__}"
            )
    return callbacks


def _reads_model_per_batch(callback):
    """Whether a Keras callback may read or save the model at a batch's begin or end."""
    import keras

    if isinstance(callback, keras.callbacks.ModelCheckpoint):
        return callback.save_freq != "epoch"
    if isinstance(callback, keras.callbacks.LambdaCallback):
        return any(hook in vars(callback) for hook in _BATCH_HOOKS)
    return False


# ---- accelerate ------------------------------------------------------------------------


def accelerate(keras_model):
    """Return `keras_model` wrapped: its `.fit` has Keras' signature and defaults and trains on
    fastnaive's engine (fastnaive.keras.fit); every other attribute is the Keras model's.

        model = fastnaive.keras.accelerate(model)
        history = model.fit(x_train, y_train, epochs=5, validation_split=0.1)
    """
    import keras

    if not isinstance(keras_model, keras.Model):
        raise TypeError(
            f"Expected keras_model to be a Keras model. Received: {type(keras_model).__name__}"
        )
    return Accelerated(keras_model)


class Accelerated:
    """A Keras model whose fit runs on fastnaive's engine; `.model` is the Keras model."""

    def __init__(self, keras_model):
        object.__setattr__(self, "model", keras_model)

    def fit(self, *args, **kwargs):
        return fit(self.model, *args, **kwargs)

    def __getattr__(self, name):
        if name == "model":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __setattr__(self, name, value):
        setattr(self.model, name, value)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __repr__(self):
        return f"accelerate({self.model!r})"


_FIT_PARAMETERS = list(inspect.signature(fit).parameters.values())
Accelerated.fit.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *_FIT_PARAMETERS[1:]]
)
Accelerated.fit.__doc__ = fit.__doc__
