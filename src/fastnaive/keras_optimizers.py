"""Keras optimizers translated to fastnaive's: SGD and Adam with their settings and state.

Keras is imported inside the functions, so importing this module does not import
TensorFlow or Keras.
"""

import sys

import numpy as np

from fastnaive.optimizers import SGD, Adam

__all__ = [
    "optimizer_from_keras",
    "optimizer_settings",
    "load_optimizer_state",
    "store_optimizer_state",
    "schedule_rates",
]

# What fastnaive reproduces of each Keras optimizer, besides learning_rate.
_OPTIMIZER_SETTINGS = {"SGD": ("momentum", "nesterov"), "Adam": ("beta_1", "beta_2", "epsilon")}
_SUPPORTED_OPTIMIZERS = (
    "keras.optimizers.SGD (learning_rate, momentum, nesterov) or keras.optimizers.Adam "
    "(learning_rate, beta_1, beta_2, epsilon)"
)
# The settings that change Keras' update, accepted only at these values (weight_decay also 0).
_INERT_SETTINGS = {
    "weight_decay": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
    "use_ema": False,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
    "amsgrad": False,
}
# Settings without effect while the ones above keep those values.
_UNUSED_SETTINGS = ("name", "ema_momentum", "ema_overwrite_frequency")
# keras.optimizers.schedules' own schedules: each a function of the step alone.
_SCHEDULES = (
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
)


def optimizer_from_keras(keras_optimizer):
    """Return the fastnaive SGD or Adam that makes the updates of a Keras SGD or Adam.

    Keras 3 and fastnaive update alike: SGD v := momentum * v - lr * g, w := w + v
    (nesterov: w := w + momentum * v - lr * g); Adam with the bias corrections in the step
    size, lr * sqrt(1 - beta_2**t) / (1 - beta_1**t), and epsilon outside the square root.

    Translated: learning_rate (a float; Keras stores it as a float32, and that value is
    taken), SGD's momentum and nesterov, Adam's beta_1, beta_2 and epsilon and, once the
    Keras optimizer is built, its state (the iteration count, the momentums and Adam's
    velocities, by position of the weights it was built on). Refused, naming the setting: any
    other class, subclasses included (TypeError); a learning-rate schedule or callable
    (TypeError; fastnaive.keras.fit applies keras.optimizers.schedules' own);
    weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, loss_scale_factor,
    gradient_accumulation_steps and amsgrad (ValueError).

    Importing fastnaive.keras imports neither Keras nor TensorFlow; this function imports
    Keras, which the caller already has since it holds a Keras optimizer.
    """
    maker, settings = optimizer_settings(keras_optimizer)
    rate = settings["learning_rate"]
    if not isinstance(rate, float):
        raise TypeError(
            f"Expected a Keras optimizer with a float learning_rate (fastnaive.keras.fit also "
            f"applies keras.optimizers.schedules' schedules). Received: "
            f"learning_rate={type(rate).__name__}"
        )
    optimizer = maker(**settings)
    load_optimizer_state(optimizer, keras_optimizer)
    return optimizer


def optimizer_settings(keras_optimizer):
    """(fastnaive class, its keyword arguments) for a Keras SGD or Adam, after checking every
    setting; learning_rate is a float, or the built-in schedule (a new object) it follows."""
    # A caller holding a Keras optimizer has imported Keras: anything else is refused without
    # importing it (a long import that an interrupt could leave half done).
    keras = sys.modules.get("keras")
    makers = {} if keras is None else {keras.optimizers.SGD: SGD, keras.optimizers.Adam: Adam}
    kind = type(keras_optimizer)
    if kind not in makers:
        raise TypeError(
            f"Expected a Keras optimizer fastnaive has: {_SUPPORTED_OPTIMIZERS}. "
            f"Received: optimizer={kind.__name__}"
        )
    name = kind.__name__
    try:
        config = keras_optimizer.get_config()
    except NotImplementedError as error:  # a schedule of a class without get_config
        raise TypeError(
            f"Expected learning_rate to be a float or one of keras.optimizers.schedules' "
            f"{', '.join(_SCHEDULES)}. Received: a learning_rate Keras cannot describe ({error})"
        ) from None
    settings = {key: config[key] for key in _OPTIMIZER_SETTINGS[name]}
    for key, value in config.items():
        if key in settings or key in _UNUSED_SETTINGS or key == "learning_rate":
            continue
        inert = key in _INERT_SETTINGS and (
            value == _INERT_SETTINGS[key] or (key == "weight_decay" and value == 0)
        )
        if not inert:
            raise ValueError(
                f"Expected a Keras {name} without {key}; fastnaive translates "
                f"{_SUPPORTED_OPTIMIZERS}. Received: {key}={value!r}"
            )
    if name == "SGD":
        # Keras' SGD takes momentum through ops.cast, a float32 on the TensorFlow backend.
        settings["momentum"] = float(
            keras.ops.convert_to_numpy(keras.ops.cast(config["momentum"], "float64"))
        )
    rate = config["learning_rate"]
    settings["learning_rate"] = rate if isinstance(rate, float) else _schedule(rate)
    return makers[kind], settings


def _schedule(config):
    """The keras.optimizers.schedules schedule of a serialized learning_rate, or raise."""
    import keras

    try:
        schedule = keras.optimizers.schedules.deserialize(config)
    except (TypeError, ValueError):
        schedule = None
    if type(schedule) not in [getattr(keras.optimizers.schedules, n) for n in _SCHEDULES]:
        described = config.get("class_name", config) if isinstance(config, dict) else config
        raise TypeError(
            f"Expected learning_rate to be a float or one of keras.optimizers.schedules' "
            f"{', '.join(_SCHEDULES)}. Received: learning_rate={described!r}"
        )
    return schedule


def _state_variables(keras_optimizer):
    """A built Keras optimizer's state: its variables but the iteration count and learning
    rate, as Keras builds them (for each model weight in turn, its momentum then velocity)."""
    own = (keras_optimizer.iterations, keras_optimizer.learning_rate)
    return [v for v in keras_optimizer.variables if not any(v is o for o in own)]


def load_optimizer_state(optimizer, keras_optimizer):
    """Give `optimizer` a built Keras optimizer's iteration count and state arrays."""
    import keras

    if not keras_optimizer.built:
        return
    variables, n = _state_variables(keras_optimizer), optimizer.n_slots
    if len(variables) % max(n, 1) or (variables and not n):
        raise ValueError(
            f"Expected {n} state variables per weight in the Keras "
            f"{type(keras_optimizer).__name__}. Received: {len(variables)} variables"
        )
    arrays = [keras.ops.convert_to_numpy(v).reshape(-1) for v in variables]
    slots = [arrays[i : i + n] for i in range(0, len(arrays), n)] if n else []
    iterations = int(keras.ops.convert_to_numpy(keras_optimizer.iterations))
    optimizer.set_state({"iterations": iterations, "slots": slots})


def store_optimizer_state(optimizer, keras_optimizer, keras_variables):
    """Write `optimizer`'s iteration count and state into the Keras optimizer (built on
    keras_variables first if needed), so that Keras' own fit continues from it."""
    if not keras_optimizer.built:
        keras_optimizer.build(keras_variables)
    state = optimizer.get_state()
    keras_optimizer.iterations.assign(state["iterations"])
    arrays = [array for slot in state["slots"] for array in slot]
    for variable, array in zip(_state_variables(keras_optimizer), arrays):
        variable.assign(array.reshape(variable.shape))


def schedule_rates(schedule, first_step, n_steps):
    """The schedule's learning rates for steps first_step, first_step + 1, ... as floats,
    computed in one vectorized call (within a few float32 ulps of Keras' one-step calls)."""
    import keras

    if n_steps == 0:
        return np.empty(0)
    steps = keras.ops.arange(first_step, first_step + n_steps, dtype="int64")
    rates = keras.ops.convert_to_numpy(keras.ops.vectorized_map(schedule, steps))
    rates = np.asarray(rates, np.float64).reshape(n_steps)
    bad = np.flatnonzero(~(np.isfinite(rates) & (rates > 0)))
    if bad.size:
        raise ValueError(
            f"Expected a learning rate schedule > 0 at each of the run's steps "
            f"{first_step}..{first_step + n_steps - 1} (fastnaive's optimizers take rates > 0). "
            f"Received: {type(schedule).__name__} giving {float(rates[bad[0]])} at "
            f"step {first_step + bad[0]}"
        )
    return rates
