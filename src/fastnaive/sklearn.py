"""scikit-learn's MLPClassifier and MLPRegressor, trained by fastnaive's engine.

A drop-in for `sklearn.neural_network`: only the import changes,

    from fastnaive.sklearn import MLPClassifier  # was: from sklearn.neural_network import ...

The estimators take scikit-learn's parameters with its defaults, and train as its MLP does,
step for step: the same initial weights drawn from `random_state` in the same order, the same
shuffling, batches, early-stopping split, loss and L2 term, learning-rate schedules,
stopping rule and fitted attributes, so that for one `random_state` they reach scikit-learn's
`coefs_` and `loss_curve_` to float tolerance. Each epoch runs `fastnaive.fit` on a
NaiveSequential of NaiveDense layers with fastnaive's SGD or Adam; scipy.sparse inputs train
on the CSR kernels. Not offered: the "lbfgs" solver and MLPRegressor's "poisson" loss
(ValueError); `max_fun` is accepted and unused (it is lbfgs's).

How the two objectives line up. For a batch of samples with weights w_i (1 unweighted) and
S = sum w_i, scikit-learn minimises (sum_i w_i l_i + alpha / 2 * sum(W**2)) / S, where l_i is
the cross-entropy summed over the outputs, or half the squared error averaged over them (its
gradient, p - y, is that of half the squared error summed over them). fastnaive's losses are
Keras' (binary cross-entropy and squared error averaged over the outputs, without the
half), divided by the batch size, plus l2 * sum(W**2). With each batch's weights scaled to
sum to its size and l2 = alpha / (2 c S), scikit-learn's gradient is c times fastnaive's, where
c is 1 for a softmax output, K for K logistic outputs and n_outputs / 2 for squared error. So
SGD runs at c times scikit-learn's learning rate and Adam with epsilon / c, which are the same
steps; l2 is set before each batch (the short last one, and weighted batches, have their own
S), and the batch losses are converted back to scikit-learn's for `loss_curve_`. fastnaive's
Adam corrects its bias as Keras does, from the betas rounded to float32: its learning rate is
set before each step so that the step is scikit-learn's.

One difference remains, in the losses reported (the gradients are the same): scikit-learn
clips probabilities to [eps, 1 - eps] before taking their logs (eps is 2.2e-16 in float64,
1.2e-7 in float32), fastnaive takes the cross-entropy exactly from the logits. So a sample
whose true class gets a probability below eps adds more to `loss_curve_` here than
scikit-learn's -log(eps) (36 in float64, 16 in float32), and one that gets a probability
above 1 - eps adds less than scikit-learn's eps.
"""

import contextlib
import math
import numbers
import warnings
import weakref

import numpy as np
import scipy.sparse

try:
    from sklearn.utils.validation import validate_data
except ImportError as error:  # no scikit-learn, or one older than 1.6
    raise ImportError(
        "fastnaive.sklearn needs scikit-learn >= 1.6: pip install 'scikit-learn>=1.6'"
    ) from error
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d

from fastnaive.callbacks import Callback
from fastnaive.layers import NaiveDense
from fastnaive.models import NaiveSequential
from fastnaive.optimizers import SGD, Adam
from fastnaive.training import fit as fastnaive_fit

__all__ = ["MLPClassifier", "MLPRegressor", "expected_failed_checks"]

# scikit-learn's hidden activations as fastnaive names them.
_HIDDEN_ACTIVATIONS = {"identity": None, "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
# Each output activation's fastnaive head and the loss that absorbs it.
_HEADS = {
    "softmax": ("softmax", "sparse_categorical_crossentropy"),
    "logistic": ("sigmoid", "binary_crossentropy"),
    "identity": (None, "mean_squared_error"),
}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# The rows of a shuffled epoch are gathered this many bytes at a time, one fastnaive.fit each.
_GATHER_BYTES = 32 * 2**20
# Each fitted estimator's NaiveSequential, whose arrays are its coefs_ and intercepts_.
_models = weakref.WeakKeyDictionary()


def expected_failed_checks(estimator):
    """{check name: reason} of the scikit-learn estimator checks this estimator is expected to
    fail, for `check_estimator(..., expected_failed_checks=)` and `parametrize_with_checks`."""
    if np.dtype(estimator.get_params().get("dtype", np.float64)) == np.float32:
        return dict(_FLOAT32_FAILURES)
    return {}


# What float32 training (the default dtype) cannot meet: the check compares the predictions
# of two fits of up to 200 epochs with assert_allclose's rtol of 1e-7, under float32's
# rounding of 6e-8.
_FLOAT32_REASON = (
    "float32: the fits on weighted and on repeated samples sum in different orders, and "
    "after 150-200 Adam epochs their predictions differ by 1e-5 to 2e-4, above the check's "
    "rtol of 1e-7 (in float64 the check passes, to 4e-16)"
)
_FLOAT32_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": _FLOAT32_REASON,
    "check_sample_weight_equivalence_on_sparse_data": _FLOAT32_REASON,
}


class _UnfusedSGD(SGD):
    """fastnaive's SGD, its step never folded into the weight-gradient GEMMs: with an L2
    factor the fused step also decays the biases, which scikit-learn does not penalise."""

    @property
    def gemm_scale(self):
        return None


class _Solver:
    """scikit-learn's SGDOptimizer or AdamOptimizer around a fastnaive SGD or Adam: the
    learning rate in scikit-learn's units, its schedule, and the step scale c (module
    docstring)."""

    def __init__(self, estimator, scale):
        self.scale = scale
        self.learning_rate = self.learning_rate_init = float(estimator.learning_rate_init)
        self.power_t = float(estimator.power_t)
        if estimator.solver == "sgd":
            self.schedule = estimator.learning_rate
            sgd = _UnfusedSGD if estimator.alpha and not estimator.momentum else SGD
            self.optimizer = sgd(
                scale * self.learning_rate,
                momentum=estimator.momentum,
                nesterov=estimator.nesterovs_momentum,
            )
            self.betas = None
        else:
            self.schedule = "constant"  # scikit-learn's Adam has no schedule
            self.optimizer = Adam(
                self.learning_rate,
                beta_1=estimator.beta_1,
                beta_2=estimator.beta_2,
                epsilon=estimator.epsilon / scale,
            )
            self.betas = (float(estimator.beta_1), float(estimator.beta_2))

    def before_step(self):
        """Before each step. fastnaive's Adam corrects its bias as Keras does, from the betas
        rounded to float32; scikit-learn's from the betas as given. Adam's learning rate is
        set so that the step sizes agree: lr sqrt(1 - b2^t) / (1 - b1^t) with scikit-learn's
        betas."""
        if self.betas is None:
            return
        t = self.optimizer.iterations + 1
        (b1, b2), (r1, r2) = self.betas, (float(np.float32(b)) for b in self.betas)
        given = math.sqrt(1 - b2**t) / (1 - b1**t)
        rounded = math.sqrt(1 - r2**t) / (1 - r1**t)
        self.optimizer.learning_rate = self.learning_rate * given / rounded

    def _set(self, learning_rate):
        self.learning_rate = learning_rate
        self.optimizer.learning_rate = self.scale * learning_rate

    def iteration_ends(self, time_step):
        """After each epoch: invscaling's learning_rate_init / (t + 1) ** power_t."""
        if self.schedule == "invscaling":
            self._set(self.learning_rate_init / (time_step + 1) ** self.power_t)

    def trigger_stopping(self, message, verbose):
        """True to stop; adaptive divides the learning rate by 5 instead while it is > 1e-6."""
        if self.schedule != "adaptive":
            if verbose:
                print(message + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(message + " Learning rate too small. Stopping.")
            return True
        self._set(self.learning_rate / 5.0)
        if verbose:
            print(f"{message} Setting learning rate to {self.learning_rate:f}")
        return False


class _BatchSchedule(Callback):
    """Sets each batch's L2 factor (and Adam's learning rate, _Solver.before_step) before it
    runs, and sums scikit-learn's batch losses.

    fastnaive's batch loss is L = data + l2 * sum(W**2) (the weights before the step);
    scikit-learn's is d * data + c * l2 * sum(W**2), where d (1, K or 1/2) converts the data
    term and c the penalty (module docstring). sum(W**2) is only computed when c != d.
    """

    writes_weights = False  # the weights are fastnaive's own arrays, read only

    def __init__(self, solver, layers, l2s, sizes, loss_scale, step_scale):
        self.solver = solver
        self.layers, self.l2s, self.sizes = layers, l2s, sizes
        self.loss_scale, self.step_scale = loss_scale, step_scale
        self.track_squares = step_scale != loss_scale and bool(l2s.any())
        self.total = 0.0
        self.squares = 0.0
        self.prepare(0)

    def prepare(self, batch):
        for layer in self.layers:
            layer.l2 = float(self.l2s[batch])
        if self.track_squares:
            self.squares = sum(float(np.dot(a.W.ravel(), a.W.ravel())) for a in self.layers)

    def on_train_batch_begin(self, batch, logs=None):
        self.solver.before_step()

    def on_train_batch_end(self, batch, logs=None):
        l2 = float(self.l2s[batch])
        loss = self.loss_scale * logs["batch_loss"]
        loss += (self.step_scale - self.loss_scale) * l2 * self.squares
        self.total += loss * float(self.sizes[batch])
        if batch + 1 < len(self.l2s):
            self.prepare(batch + 1)


class _Epochs:
    """One fit call's training data in the model's layout, and epochs over it: each runs
    fastnaive.fit on the epoch's rows in order (gathered _GATHER_BYTES at a time) with the
    optimizer kept across epochs, and returns scikit-learn's epoch loss."""

    def __init__(self, model, solver, x, targets, sample_weight, batch_size, alpha, scales):
        self.model, self.solver = model, solver
        self.x, self.targets, self.sample_weight = x, targets, sample_weight
        self.batch_size, self.alpha = batch_size, alpha
        self.step_scale, self.loss_scale = scales
        if scipy.sparse.issparse(x):
            row_bytes = max(1, x.nnz // max(1, x.shape[0])) * (x.dtype.itemsize + 8) + 8
        else:
            row_bytes = x.shape[1] * x.dtype.itemsize
        self.rows_per_call = batch_size * max(1, _GATHER_BYTES // (batch_size * row_bytes))
        self.x_buffer = self.y_buffer = None

    def run(self, rows):
        """Train one epoch over `rows` (positions in x, in order; None: all, in order)."""
        n = self.x.shape[0] if rows is None else rows.shape[0]
        total = 0.0
        for start in range(0, n, self.rows_per_call):
            stop = min(start + self.rows_per_call, n)
            if rows is None:
                part = slice(start, stop)
                x, y = self.x[part], self.targets[part]
                w = None if self.sample_weight is None else self.sample_weight[part]
            else:
                x, y, w = self._gather(rows[start:stop])
            total += self._train(x, y, w)
        return total / n

    def _gather(self, rows):
        if self.y_buffer is None:
            self.y_buffer = np.empty(
                (self.rows_per_call, *self.targets.shape[1:]), self.targets.dtype
            )
        y = np.take(self.targets, rows, axis=0, out=self.y_buffer[: rows.shape[0]])
        w = None if self.sample_weight is None else self.sample_weight[rows]
        if scipy.sparse.issparse(self.x):
            return self.x[rows], y, w
        if self.x_buffer is None:
            self.x_buffer = np.empty((self.rows_per_call, self.x.shape[1]), self.x.dtype)
        return np.take(self.x, rows, axis=0, out=self.x_buffer[: rows.shape[0]]), y, w

    def _train(self, x, y, w):
        """fastnaive.fit over one run of batches; returns the sum of scikit-learn's batch
        losses, each times its batch's size."""
        n = y.shape[0]
        starts = np.arange(0, n, self.batch_size)
        sizes = np.diff(np.append(starts, n))
        sums = sizes.astype(np.float64)
        if w is not None:
            weight_sums = np.add.reduceat(w, starts)
            # Weights scaled to sum to each batch's size; a batch of zero weight only decays.
            positive = weight_sums > 0
            factors = np.zeros_like(weight_sums)
            np.divide(sizes, weight_sums, out=factors, where=positive)
            w = w * np.repeat(factors, sizes)
            sums = np.where(positive, weight_sums, sums)
        l2s = self.alpha / (2 * self.step_scale * sums)
        schedule = _BatchSchedule(
            self.solver, self.model.dense_layers, l2s, sizes, self.loss_scale, self.step_scale
        )
        fastnaive_fit(
            self.model,
            x,
            y,
            1,
            self.batch_size,
            optimizer=self.solver.optimizer,
            sample_weight=w,
            shuffle=False,
            seed=0,
            verbose=0,
            callbacks=[schedule],
        )
        return schedule.total


def _shuffled(array, random_state):
    """sklearn.utils.shuffle(array, random_state=random_state), without its argument checks
    (a millisecond an epoch): a copy of array in the order random_state.shuffle draws."""
    order = np.arange(array.shape[0])
    random_state.shuffle(order)
    return array[order]


def _usable(array, dtype):
    """True when a NaiveDense can take `array` as its W or b without a copy."""
    return (
        isinstance(array, np.ndarray)
        and array.dtype == dtype
        and array.flags.c_contiguous
        and array.flags.writeable
        and array.flags.aligned
    )


def _weights_dtype(coefs):
    """The dtype a model with these coefficients computes in: theirs, or float64."""
    dtype = np.asarray(coefs[0]).dtype
    return dtype if dtype in _FLOATS else np.dtype(np.float64)


def _model_of(estimator, training=False):
    """The NaiveSequential that computes as the estimator's coefs_ and intercepts_.

    Kept per estimator while those arrays (the objects) and the activations stay. For
    training, the model's own (cache-line aligned) arrays become coefs_ and intercepts_, so
    that fastnaive.fit updates them in place; for prediction, usable arrays are shared, others
    copied in at each call.
    """
    arrays = [*estimator.coefs_, *estimator.intercepts_]
    key = (estimator.activation, estimator.out_activation_)
    cached = _models.get(estimator)
    if (
        cached is not None
        and cached[0] == key
        and len(cached[1]) == len(arrays)
        and all(a is b for a, b in zip(cached[1], arrays))
        and (cached[3] or not training)
    ):
        model, shared = cached[2], cached[3]
        if not shared:
            model.set_weights(_interleaved(estimator))
        return model
    coefs = estimator.coefs_
    dtype = _weights_dtype(coefs)
    head, loss = _HEADS[estimator.out_activation_]
    hidden = _HIDDEN_ACTIVATIONS[estimator.activation]
    layers = [
        NaiveDense(*np.shape(coef), head if i == len(coefs) - 1 else hidden, dtype=dtype, seed=0)
        for i, coef in enumerate(coefs)
    ]
    model = NaiveSequential(layers, loss=loss)
    shared = not training and all(_usable(a, dtype) for a in arrays)
    if shared:
        for layer, coef, intercept in zip(layers, coefs, estimator.intercepts_):
            layer.W, layer.b = coef, intercept
    else:
        model.set_weights(_interleaved(estimator))
    if training:
        estimator.coefs_ = [layer.W for layer in layers]
        estimator.intercepts_ = [layer.b for layer in layers]
        arrays, shared = [*estimator.coefs_, *estimator.intercepts_], True
    _models[estimator] = (key, arrays, model, shared)
    return model


def _interleaved(estimator):
    """[W0, b0, W1, b1, ...] from coefs_ and intercepts_."""
    return [a for pair in zip(estimator.coefs_, estimator.intercepts_) for a in pair]


# Checks of the constructor's parameters, in the project's error style.


def _number(estimator, name, low, high=math.inf, closed="left", integral=False):
    """The parameter `name` as a number in the interval (closed on `closed` sides)."""
    value = getattr(estimator, name)
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kind):
        what = "an integer" if integral else "a real number"
        raise TypeError(f"Expected {name} to be {what}. Received: {name}={value!r}")
    above = low <= value if closed in ("left", "both") else low < value
    below = value <= high if closed in ("right", "both") else value < high
    if not (above and below):
        left = "[" if closed in ("left", "both") else "("
        right = "]" if closed in ("right", "both") else ")"
        raise ValueError(
            f"Expected {name} in {left}{low}, {high}{right}. Received: {name}={value!r}"
        )
    return value


def _option(estimator, name, options):
    value = getattr(estimator, name)
    if not (isinstance(value, str) and value in options):
        raise ValueError(f"Expected {name} in {sorted(options)}. Received: {name}={value!r}")
    return value


def _boolean(estimator, name):
    value = getattr(estimator, name)
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected {name} to be True or False. Received: {name}={value!r}")
    return bool(value)


def _store_parameters(estimator, parameters):
    """Set each constructor parameter as the attribute of its name, as scikit-learn expects."""
    for name, value in parameters.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


def _checked_sample_weight(sample_weight, n_samples):
    """sample_weight as float64 (n_samples,) >= 0 with a nonzero one, or None."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, (bool, np.bool_)):
        weights = np.full(n_samples, float(sample_weight))
    else:
        weights = np.asarray(sample_weight)
        if weights.dtype.kind not in "biuf" or weights.shape != (n_samples,):
            raise ValueError(
                f"Expected sample_weight of shape ({n_samples},), one real number per "
                f"sample. Received: shape {weights.shape}, dtype {weights.dtype}"
            )
        weights = weights.astype(np.float64)
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            "Expected sample_weight finite and >= 0 (fastnaive's losses take no negative "
            f"weights). Received: values in [{weights.min()}, {weights.max()}]"
        )
    if not weights.any():
        raise ValueError(
            "Expected sample_weight with at least one non-zero weight. Received: all weights zero"
        )
    return weights


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, training, prediction."""

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        dtype="float32",
        n_threads=None,
    ):
        _store_parameters(self, locals())

    def _check_params(self):
        """Check every constructor parameter; return the hidden layer sizes as a list."""
        sizes = self.hidden_layer_sizes
        if not hasattr(sizes, "__iter__") or isinstance(sizes, str):
            sizes = [sizes]
        sizes = list(sizes)
        for size in sizes:
            if (
                isinstance(size, (bool, np.bool_))
                or not isinstance(size, numbers.Integral)
                or size < 1
            ):
                raise ValueError(
                    f"Expected hidden_layer_sizes to be an integer >= 1 or a sequence of them. "
                    f"Received: hidden_layer_sizes={self.hidden_layer_sizes!r}"
                )
        _option(self, "activation", _HIDDEN_ACTIVATIONS)
        if self.solver == "lbfgs":
            raise ValueError(
                "Expected solver 'sgd' or 'adam'. fastnaive does not offer 'lbfgs', "
                "scikit-learn's full-batch quasi-Newton solver: use "
                "sklearn.neural_network for it. Received: solver='lbfgs'"
            )
        _option(self, "solver", {"sgd", "adam"})
        _number(self, "alpha", 0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            if isinstance(self.batch_size, str):
                raise ValueError(
                    f"Expected batch_size 'auto' or an integer >= 1. "
                    f"Received: batch_size={self.batch_size!r}"
                )
            _number(self, "batch_size", 1, integral=True)
        _option(self, "learning_rate", {"constant", "invscaling", "adaptive"})
        _number(self, "learning_rate_init", 0, closed="neither")
        _number(self, "power_t", 0)
        _number(self, "max_iter", 1, integral=True)
        _boolean(self, "shuffle")
        check_random_state(self.random_state)
        _number(self, "tol", 0)
        if not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise TypeError(
                f"Expected verbose to be a bool or an integer. Received: verbose={self.verbose!r}"
            )
        _boolean(self, "warm_start")
        # fastnaive's SGD takes momentum < 1 (scikit-learn also allows 1).
        _number(self, "momentum", 0, 1)
        _boolean(self, "nesterovs_momentum")
        _boolean(self, "early_stopping")
        _number(self, "validation_fraction", 0, 1)
        _number(self, "beta_1", 0, 1)
        _number(self, "beta_2", 0, 1)
        _number(self, "epsilon", 0, closed="neither")
        if not (isinstance(self.n_iter_no_change, float) and self.n_iter_no_change == math.inf):
            _number(self, "n_iter_no_change", 1, integral=True)
        _number(self, "max_fun", 1, integral=True)
        self._checked_dtype()
        self._checked_threads()
        return [int(size) for size in sizes]

    def _checked_dtype(self):
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in _FLOATS:
            raise ValueError(
                f"Expected dtype 'float32' or 'float64'. Received: dtype={self.dtype!r}"
            )
        return dtype

    def _checked_threads(self):
        if self.n_threads is not None and (
            isinstance(self.n_threads, (bool, np.bool_))
            or not isinstance(self.n_threads, numbers.Integral)
            or self.n_threads < 1
        ):
            raise ValueError(
                f"Expected n_threads None or an integer >= 1. "
                f"Received: n_threads={self.n_threads!r}"
            )
        return self.n_threads

    def _threads(self):
        """A context limiting BLAS and OpenMP threads to n_threads (None: no limit)."""
        if self._checked_threads() is None:
            return contextlib.nullcontext()
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=int(self.n_threads))

    # Training

    def _validated_data(self, X, y, reset, **options):
        """X and y checked as scikit-learn's MLP checks them; a y of one column made 1-d."""
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=["csr", "csc"],
            multi_output=True,
            dtype=(np.float64, np.float32),
            reset=reset,
            **options,
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        n_samples, n_features = X.shape
        sample_weight = _checked_sample_weight(sample_weight, n_samples)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        layer_units = [n_features, *hidden, y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self.n_outputs_ = y.shape[1]
            dtype = np.dtype(np.float32) if X.dtype == np.float32 else self._checked_dtype()
            self._initialize(y, layer_units, dtype)
        else:
            fitted = [self.coefs_[0].shape[0]] + [coef.shape[1] for coef in self.coefs_]
            if fitted != layer_units:
                raise ValueError(
                    f"Expected layers of sizes {fitted}, as fitted (warm_start and partial_fit "
                    f"keep them). Received: hidden_layer_sizes and data giving {layer_units}"
                )
        model = _model_of(self, training=True)
        with self._threads():
            self._fit_stochastic(model, X, y, sample_weight, incremental)
        if not all(np.isfinite(w).all() for w in (*self.coefs_, *self.intercepts_)):
            raise ValueError(
                "Expected finite weights after training; the input data may contain large "
                "values and need to be preprocessed. Received: non-finite weights"
            )
        return self

    def _initialize(self, y, layer_units, dtype):
        """First fit: scikit-learn's attributes and Glorot-uniform weights drawn from
        random_state in its order (each layer's coefficients, then its intercepts)."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._output_activation()
        factor = 2.0 if self.activation == "logistic" else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(
                self._random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
            )
            self.intercepts_.append(
                self._random_state.uniform(-bound, bound, fan_out).astype(dtype)
            )
        self._best_coefs = [c.copy() for c in self.coefs_]
        self._best_intercepts = [i.copy() for i in self.intercepts_]
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _scales(self):
        """(c, d): scikit-learn's gradient over fastnaive's, and its data loss over fastnaive's."""
        if self.out_activation_ == "identity":
            return self.n_outputs_ / 2, 0.5
        if self.out_activation_ == "softmax":
            return 1.0, 1.0
        return float(self.n_outputs_), float(self.n_outputs_)

    def _fit_stochastic(self, model, X, y, sample_weight, incremental):
        step_scale, loss_scale = self._scales()
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = _Solver(self, step_scale)
        early_stopping = self.early_stopping
        self._prepare_stopping_state(early_stopping)
        x = self._training_inputs(X, model.dtype)
        n_all = X.shape[0]
        train_rows = X_val = y_val = sample_weight_val = None
        if early_stopping:
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            train_rows, val_rows = train_test_split(
                np.arange(n_all),
                random_state=self._random_state,
                test_size=self.validation_fraction,
                stratify=stratify,
            )
            if val_rows.shape[0] < 2:
                raise ValueError(
                    f"Expected a validation set of at least 2 samples: increase "
                    f"validation_fraction or the data. Received: validation_fraction="
                    f"{self.validation_fraction} of {n_all} samples"
                )
            X_val, y_val = x[val_rows], y[val_rows]
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
            if sample_weight is not None:
                sample_weight_val = sample_weight[val_rows]
        n_samples = n_all if train_rows is None else train_rows.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. It is going to "
                    "be clipped",
                    stacklevel=4,
                )
            batch_size = int(np.clip(self.batch_size, 1, n_samples))
        epochs = _Epochs(
            model,
            self._optimizer,
            x,
            self._targets(y, model.dtype),
            sample_weight,
            batch_size,
            float(self.alpha),
            (step_scale, loss_scale),
        )
        sample_idx = np.arange(n_samples, dtype=int)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = _shuffled(sample_idx, self._random_state)
                if train_rows is not None:
                    rows = train_rows[sample_idx] if self.shuffle else train_rows
                else:
                    rows = sample_idx if self.shuffle else None
                self.loss_ = self._run_epoch(epochs, rows)
                self.n_iter_ += 1
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(early_stopping, X_val, y_val, sample_weight_val)
                self._optimizer.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    message = (
                        f"{what} did not improve more than tol={self.tol:f} for "
                        f"{self.n_iter_no_change} consecutive epochs."
                    )
                    if self._optimizer.trigger_stopping(message, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                        "and the optimization hasn't converged yet.",
                        ConvergenceWarning,
                        stacklevel=4,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if early_stopping:
            for target, best in zip(
                (*self.coefs_, *self.intercepts_), (*self._best_coefs, *self._best_intercepts)
            ):
                np.copyto(target, best)

    def _prepare_stopping_state(self, early_stopping):
        """The attributes of the stopping rule in use, when a warm start switched rules."""
        if early_stopping and self.validation_scores_ is None:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self.best_loss_ = None
            self._best_coefs = [c.copy() for c in self.coefs_]
            self._best_intercepts = [i.copy() for i in self.intercepts_]
        elif not early_stopping and self.best_loss_ is None:
            self.best_loss_ = min(self.loss_curve_, default=np.inf)
            self.validation_scores_ = self.best_validation_score_ = None

    @staticmethod
    def _run_epoch(epochs, rows):
        try:
            return epochs.run(rows)
        except FloatingPointError as error:
            raise ValueError(
                "Expected a finite training loss; the input data may contain large values and "
                f"need to be preprocessed, or the learning rate is too large. Received: {error}"
            ) from error

    @staticmethod
    def _training_inputs(X, dtype):
        """X once in the model's dtype: C-contiguous, or CSR for scipy.sparse inputs."""
        if scipy.sparse.issparse(X):
            X = X.tocsr()
            return X if X.dtype == dtype else X.astype(dtype)
        return np.ascontiguousarray(X, dtype=dtype)

    def _targets(self, y, dtype):
        """y (n, outputs), binarised for a classifier, as the model's loss takes it."""
        if self.out_activation_ == "softmax":
            return np.ascontiguousarray(np.argmax(y, axis=1), dtype=np.intp)
        return np.ascontiguousarray(y, dtype=dtype)

    def _update_no_improvement_count(self, early_stopping, X, y, sample_weight):
        if early_stopping:
            score = self._validation_score(X, y, sample_weight)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {self.validation_scores_[-1]:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_coefs = [c.copy() for c in self.coefs_]
                self._best_intercepts = [i.copy() for i in self.intercepts_]
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _validation_score(self, X, y, sample_weight):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return self._score_function(y, y_pred, sample_weight=sample_weight)

    # Prediction

    def _forward(self, X, check_input=True):
        """The output layer's activations for X, (n_samples, n_outputs_)."""
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        model = _model_of(self)
        with self._threads():
            out = model.predict(X)
        # In the dtype scikit-learn's MLP returns: that of X's and the weights' products.
        return out.astype(np.result_type(X.dtype, out.dtype), copy=False)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The target values (class labels in classification, real numbers in regression).
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights, finite and >= 0.

        Returns
        -------
        self : object
            The trained estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)


_PARAMETERS = """
    Parameters
    ----------
    Those of scikit-learn's {name}, with its defaults and meaning, except:

    solver : {{'adam', 'sgd'}}, default='adam'
        'lbfgs' is not offered (ValueError): use scikit-learn's own estimator for it.
    momentum : float in [0, 1), default=0.9
        fastnaive's SGD takes momentum < 1.
    max_fun : int, default=15000
        Accepted for compatibility and unused (it bounds lbfgs's function calls).
    dtype : {{'float32', 'float64'}}, default='float32'
        The precision of the weights and of training. float32 inputs always train in
        float32, as scikit-learn keeps them.
    n_threads : int, default=None
        The threads fitting and predicting use (one pool, with the same results at any
        count), at most the CPUs the process can keep busy (its affinity within its
        cgroup's CPU quota); None leaves OpenMP's limit as it is (all cores). With narrow
        layers and small batches, 1 is often faster: the steps are too short to share.

    Sample weights must be >= 0 (scikit-learn also takes negative ones). A batch whose
    weights sum to zero only decays the weights by the L2 term (scikit-learn divides by
    that zero).

    `partial_fit` also works with early_stopping=True, which scikit-learn refuses: each call
    does what one epoch of `fit` does with it. It holds out validation_fraction of the
    samples it is given (stratified as `fit` splits), trains one epoch on the others, scores
    the held-out ones (validation_scores_), and ends with the weights of the best validation
    score seen over all calls (best_validation_score_): an epoch that scores no better is
    undone. With learning_rate='adaptive' the learning rate is divided by 5 after more than
    n_iter_no_change calls without an improvement of tol. Scores of calls on different data
    are compared as they are, so this is meant for repeated calls on the same data.

    Attributes
    ----------
    As scikit-learn's: coefs_, intercepts_, loss_, loss_curve_, best_loss_,
    validation_scores_, best_validation_score_, t_, n_iter_, n_layers_, n_outputs_,
    out_activation_, n_features_in_, feature_names_in_{classes}.
    coefs_ and intercepts_ are the arrays training updates in place.
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's MLPClassifier, trained by fastnaive.

    Multiclass targets get a softmax output, binary and multilabel ones logistic outputs;
    class labels may be any (strings too), as scikit-learn's LabelBinarizer takes them.
    """

    __doc__ += _PARAMETERS.format(name="MLPClassifier", classes=", classes_")

    _score_function = staticmethod(accuracy_score)

    def _output_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = self._validated_data(X, y, reset)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        f"Expected the classes of the previous fit with warm_start, "
                        f"{self.classes_}. Received: y with classes {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"Expected y among classes_ {self.classes_}. Received: y with classes {classes}"
                )
        return X, self._label_binarizer.transform(y).astype(bool)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.
        y : array-like of shape (n_samples,) or (n_samples, n_classes)
            The target values.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights, finite and >= 0.
        classes : array of shape (n_classes,), default=None
            All the classes y may ever hold: required at the first call, and then only
            checked to be the same.

        Returns
        -------
        self : object
            The trained estimator.
        """
        if self._first_partial_fit(classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _first_partial_fit(self, classes):
        """True at the first partial_fit call (classes_ is then set from `classes`)."""
        fitted = getattr(self, "classes_", None)
        if fitted is None and classes is None:
            raise ValueError(
                "Expected classes at the first call to partial_fit. Received: classes=None"
            )
        if classes is None:
            return False
        if fitted is not None:
            if not np.array_equal(fitted, unique_labels(classes)):
                raise ValueError(
                    f"Expected the classes of the previous call to partial_fit, {fitted}. "
                    f"Received: classes={classes!r}"
                )
            return False
        self.classes_ = unique_labels(classes)
        return True

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X):
        """Predict with the multi-layer perceptron classifier.

        Returns the predicted classes, (n_samples,), or (n_samples, n_classes) for multilabel.
        """
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X):
        """Probability estimates, (n_samples, n_classes), classes ordered as in classes_."""
        check_is_fitted(self)
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """The log of predict_proba(X)."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's MLPRegressor, trained by fastnaive.

    The output layer is the identity and the loss scikit-learn's squared error; its other
    loss, "poisson", is not offered (ValueError).
    """

    __doc__ += _PARAMETERS.format(name="MLPRegressor", classes="")

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        dtype="float32",
        n_threads=None,
    ):
        _store_parameters(self, locals())

    _score_function = staticmethod(r2_score)

    def _check_params(self):
        if self.loss == "poisson":
            raise ValueError(
                "Expected loss 'squared_error'. fastnaive does not offer the 'poisson' loss "
                "(an exponential output): use sklearn.neural_network for it. "
                "Received: loss='poisson'"
            )
        _option(self, "loss", {"squared_error"})
        return super()._check_params()

    def _output_activation(self):
        return "identity"

    def _validate_input(self, X, y, incremental, reset):
        return self._validated_data(X, y, reset, y_numeric=True)

    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with a single epoch over the given data; the arguments are fit's
        (returns self)."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input=check_input)
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X):
        """Predict with the multi-layer perceptron regressor: (n_samples,) or
        (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        return tags
