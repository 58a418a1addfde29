"""Tests for fastnaive.sklearn: scikit-learn's estimator checks, and scikit-learn's own MLP as
the oracle. With one random_state both draw the same initial weights, shuffles and
validation splits, so their loss curves, weights and attributes must agree to float
tolerance: tight in float64, looser in float32 (both then train in float32), over several
epochs with a short last batch and alpha > 0. Data: scikit-learn's bundled digits, breast
cancer and diabetes sets, and a subset of the real MNIST."""

import contextlib
import io
import pickle
import re
import unittest
import warnings

import numpy as np
import pytest
import scipy.sparse
from helpers import EXPECTED_RECEIVED, assert_scaled_close
from sklearn import neural_network
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.estimator_checks import (
    check_sample_weight_equivalence_on_dense_data,
    check_sample_weight_equivalence_on_sparse_data,
    parametrize_with_checks,
)

from fastnaive.sklearn import MLPClassifier, MLPRegressor, expected_failed_checks

# Relative gaps seen against scikit-learn over 5-40 epochs: float64 5e-15 (loss curves and
# weights); float32 2.5e-7 on loss curves and 2.6e-5 on weights (Adam's m / sqrt(v) turns the
# rounding of near-zero gradients into steps). float32 training drifts further over many
# steps, as scikit-learn's own does between 1 and 2 BLAS threads: the runs here are short
# and the margins 1000 and 40.
RTOL = {"float64": 5e-12, "float32": 1e-3}
ESTIMATORS = {"classifier": MLPClassifier, "regressor": MLPRegressor}
ORACLES = {
    "classifier": neural_network.MLPClassifier,
    "regressor": neural_network.MLPRegressor,
}
# Optimizers, each with a learning rate at which 6 epochs of the data below still move.
SOLVERS = {
    "sgd-nesterov": {"solver": "sgd", "learning_rate_init": 0.05},
    "sgd-momentum": {"solver": "sgd", "learning_rate_init": 0.05, "nesterovs_momentum": False},
    "sgd-plain": {"solver": "sgd", "learning_rate_init": 0.2, "momentum": 0.0},
    "adam": {"solver": "adam", "learning_rate_init": 0.01},
}
# Two hidden layers, alpha > 0, batches of 128: digits (1797 samples) ends with a batch of 5,
# diabetes (442) with one of 58.
COMMON = {
    "hidden_layer_sizes": (32, 16),
    "alpha": 0.01,
    "batch_size": 128,
    "max_iter": 6,
    "random_state": 0,
}


def digits(dtype="float64"):
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(dtype), y


def breast_cancer(dtype="float64"):
    x, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(x).astype(dtype), y


def diabetes(dtype="float64"):
    x, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(x).astype(dtype), (y - y.mean()) / y.std()


def data_for(kind, dtype="float64"):
    return digits(dtype) if kind == "classifier" else diabetes(dtype)


def both(kind, **params):
    """(fastnaive's estimator, scikit-learn's) of one kind with the same parameters; fastnaive's
    trains in float64 unless the inputs are float32, as scikit-learn's does."""
    return ESTIMATORS[kind](dtype="float64", **params), ORACLES[kind](**params)


def fit_both(ours, theirs, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return ours.fit(*args, **kwargs), theirs.fit(*args, **kwargs)


def assert_same_fit(ours, theirs, dtype="float64"):
    """Attributes, loss curve and weights of two fitted estimators agree."""
    rtol = RTOL[np.dtype(dtype).name]
    for name in ("n_iter_", "t_", "n_layers_", "n_outputs_", "out_activation_"):
        assert getattr(ours, name) == getattr(theirs, name), name
    if hasattr(theirs, "classes_"):
        np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=rtol)
    if theirs.best_loss_ is None:
        assert ours.best_loss_ is None
        np.testing.assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=rtol)
        np.testing.assert_allclose(
            ours.best_validation_score_, theirs.best_validation_score_, rtol=rtol
        )
    else:
        np.testing.assert_allclose(ours.best_loss_, theirs.best_loss_, rtol=rtol)
        assert ours.validation_scores_ is theirs.validation_scores_ is None
    for name in ("coefs_", "intercepts_"):
        for i, (a, b) in enumerate(zip(getattr(ours, name), getattr(theirs, name), strict=True)):
            assert a.dtype == b.dtype, f"{name}[{i}]"
            assert_scaled_close(a, b, rtol)


# scikit-learn's checks, every one of them. It skips a check (SkipTest) only for a missing
# optional dependency or a method the estimators do not have; the test states which.
SKIP_REASONS = (
    "pandas is not installed",
    "SCIPY_ARRAY_API is not set",
    "does not have a decision_function method",
)


@parametrize_with_checks(
    [MLPClassifier(), MLPRegressor()],
    expected_failed_checks=expected_failed_checks,
    xfail_strict=True,
)
def test_sklearn_estimator_checks(estimator, check):
    try:
        check(estimator)
    except unittest.SkipTest as skipped:
        assert any(reason in str(skipped) for reason in SKIP_REASONS), str(skipped)


@pytest.mark.parametrize("kind", ESTIMATORS)
@pytest.mark.parametrize(
    "check",
    [check_sample_weight_equivalence_on_dense_data, check_sample_weight_equivalence_on_sparse_data],
)
def test_checks_expected_to_fail_in_float32_pass_in_float64(kind, check):
    estimator = ESTIMATORS[kind](dtype="float64")
    assert check.__name__ in expected_failed_checks(ESTIMATORS[kind]())
    assert not expected_failed_checks(estimator)
    check(type(estimator).__name__, estimator)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kind", ESTIMATORS)
def test_same_training_as_sklearn(kind, solver, dtype):
    x, y = data_for(kind, dtype)
    params = {**COMMON, **SOLVERS[solver], "activation": "relu" if kind == "classifier" else "tanh"}
    ours, theirs = fit_both(*both(kind, **params), x, y)
    assert_same_fit(ours, theirs, dtype)


def test_same_training_from_the_same_initial_weights():
    """Weights set into both (coefs_ assigned, then warm_start), one draw for both."""
    x, y = digits()
    rng = np.random.default_rng(0)
    sizes = [64, 24, 10]
    coefs = [rng.normal(0, 0.3, (m, n)) for m, n in zip(sizes[:-1], sizes[1:])]
    intercepts = [rng.normal(0, 0.1, n) for n in sizes[1:]]
    ours, theirs = both("classifier", hidden_layer_sizes=(24,), max_iter=1, random_state=1)
    fit_both(ours, theirs, x, y)
    for estimator in (ours, theirs):
        estimator.coefs_ = [c.copy() for c in coefs]
        estimator.intercepts_ = [b.copy() for b in intercepts]
        estimator.set_params(warm_start=True, max_iter=5, solver="sgd", alpha=0.1)
    fit_both(ours, theirs, x, y)
    assert_same_fit(ours, theirs)


NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


def digits_multilabel():
    x, y = digits()
    return x, np.c_[y % 2, y > 4, y == 3].astype(int)


def digits_named():
    x, y = digits()
    return x, NAMES[y]


def digits_csr():
    x, y = digits()
    return scipy.sparse.csr_matrix(x), y


def diabetes_csc():
    x, y = diabetes()
    return scipy.sparse.csc_matrix(x), y


def diabetes_3_targets():
    x, y = diabetes()
    return x, np.c_[y, y**2, -x[:, 2]]


def diabetes_2_targets():
    x, y = diabetes()
    return x, np.c_[y, -x[:, 2]]


SGD, NESTEROV = SOLVERS["sgd-plain"], SOLVERS["sgd-nesterov"]
# (kind, data, parameters, sample weights?) of each target and input type.
CASES = {
    "binary-logistic": ("classifier", breast_cancer, {"activation": "logistic"}, False),
    "binary-identity-sgd": ("classifier", breast_cancer, {"activation": "identity", **SGD}, False),
    "multilabel": ("classifier", digits_multilabel, {}, False),
    "multilabel-sgd": ("classifier", digits_multilabel, SGD, False),
    "string-labels": ("classifier", digits_named, {}, False),
    "sparse-csr": ("classifier", digits_csr, {}, False),
    "sparse-csc-sgd": ("regressor", diabetes_csc, NESTEROV, False),
    "sample-weight": ("classifier", digits, {}, True),
    "sample-weight-sgd": ("classifier", digits, SGD, True),
    "multioutput": ("regressor", diabetes_3_targets, {}, False),
    "multioutput-weighted-sgd": ("regressor", diabetes_2_targets, NESTEROV, True),
}


@pytest.mark.parametrize("case", CASES)
def test_targets_inputs_and_weights_as_sklearn(case):
    kind, load, params, weighted = CASES[case]
    x, y = load()
    # Weights in [0, 3), some zero; one batch of 128 whose weights all vanish is not drawn.
    weights = np.random.default_rng(0).uniform(-0.5, 3, x.shape[0]).clip(0) if weighted else None
    ours, theirs = both(kind, **{**COMMON, **params})
    fit_both(ours, theirs, x, y, sample_weight=weights)
    assert_same_fit(ours, theirs)
    assert_predict_as(ours, theirs, x, "float64")


def assert_predict_as(ours, theirs, x, dtype):
    rtol = {"float64": 1e-12, "float32": 1e-5}[dtype]
    if hasattr(theirs, "predict_proba"):
        for method in ("predict_proba", "predict_log_proba"):
            expected = getattr(theirs, method)(x)
            actual = getattr(ours, method)(x)
            assert actual.dtype == expected.dtype, method
            assert_scaled_close(actual, expected, rtol)
        assert (ours.predict(x) == theirs.predict(x)).mean() > 0.99
        assert ours.predict(x).dtype == theirs.predict(x).dtype
    else:
        assert_scaled_close(ours.predict(x), theirs.predict(x), rtol)
    np.testing.assert_allclose(ours.score(x, theirs.predict(x)), 1.0, rtol=1e-2)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ESTIMATORS)
def test_predictions_equal_sklearn_for_equal_weights(kind, dtype):
    x, y = data_for(kind, dtype)
    ours = ESTIMATORS[kind](hidden_layer_sizes=(40,), max_iter=20, random_state=0, dtype=dtype)
    theirs = ORACLES[kind](hidden_layer_sizes=(40,), max_iter=1, random_state=3)
    fit_both(ours, theirs, x, y)
    theirs.coefs_ = [c.copy() for c in ours.coefs_]
    theirs.intercepts_ = [b.copy() for b in ours.intercepts_]
    assert_predict_as(ours, theirs, x, dtype)
    np.testing.assert_allclose(ours.score(x, y), theirs.score(x, y), rtol=RTOL[dtype])


@pytest.mark.parametrize("kind", ESTIMATORS)
def test_schedules_stopping_and_warnings_as_sklearn(kind):
    x, y = data_for(kind)
    cases = [
        # invscaling: the rate falls after each epoch with the samples seen.
        {"solver": "sgd", "learning_rate": "invscaling", "learning_rate_init": 0.2},
        # adaptive: divided by 5 after 2 epochs without a gain of tol, until 1e-6 stops it.
        {"solver": "sgd", "learning_rate": "adaptive", "learning_rate_init": 0.2, "tol": 0.05,
         "n_iter_no_change": 2, "max_iter": 60},
        # Training loss converged by tol before max_iter: no warning.
        {"tol": 0.05, "n_iter_no_change": 2, "max_iter": 100},
        # Early stopping: multiclass (not stratified) and binary or regression splits.
        {"early_stopping": True, "validation_fraction": 0.2, "max_iter": 40, "n_iter_no_change": 3},
    ]  # fmt: skip
    for params in cases:
        ours, theirs = both(kind, **{**COMMON, **params})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            ours.fit(x, y)
            ours_warned = [str(w.message) for w in caught]
            caught.clear()
            theirs.fit(x, y)
            assert ours_warned == [str(w.message) for w in caught], params
        assert_same_fit(ours, theirs)
        if ours.solver == "sgd":  # the learning rate the schedule reached
            rate = theirs._optimizer.learning_rate
            assert ours._optimizer.learning_rate == pytest.approx(rate, rel=1e-12)
        assert ours.n_iter_ < theirs.max_iter or ours_warned, params


def test_early_stopping_with_weights_and_stratified_split_as_sklearn():
    x, y = breast_cancer()
    weights = np.random.default_rng(1).uniform(0.5, 2, x.shape[0])
    params = {**COMMON, "early_stopping": True, "max_iter": 30, "n_iter_no_change": 4}
    ours, theirs = fit_both(*both("classifier", **params), x, y, sample_weight=weights)
    assert_same_fit(ours, theirs)


def test_verbose_prints_as_sklearn():
    x, y = digits()
    params = {**COMMON, "solver": "sgd", "learning_rate": "adaptive", "learning_rate_init": 0.2,
              "tol": 0.05, "n_iter_no_change": 1, "max_iter": 8, "early_stopping": True,
              "verbose": True}  # fmt: skip
    printed = []
    for estimator in both("classifier", **params):
        with contextlib.redirect_stdout(io.StringIO()) as out, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.fit(x, y)
        printed.append(out.getvalue())
    assert "Setting learning rate to" in printed[1]
    assert printed[0] == printed[1]


@pytest.mark.parametrize("kind", ESTIMATORS)
def test_partial_fit_and_pickle_as_sklearn(kind):
    x, y = data_for(kind)
    params = {**COMMON, "solver": "sgd", "learning_rate": "invscaling", "learning_rate_init": 0.3}
    ours, theirs = both(kind, **params)
    extra = {"classes": np.arange(10)} if kind == "classifier" else {}
    for i, part in enumerate(np.array_split(np.arange(x.shape[0]), 4)):
        ours.partial_fit(x[part], y[part], **extra)
        theirs.partial_fit(x[part], y[part], **extra)
        if i == 1:  # the optimizer's state travels with the estimator
            ours = pickle.loads(pickle.dumps(ours))
            np.testing.assert_array_equal(
                ours.predict(x), pickle.loads(pickle.dumps(ours)).predict(x)
            )
    assert_same_fit(ours, theirs)


def test_partial_fit_needs_classes_first():
    x, y = digits()
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + "classes=None"):
        MLPClassifier().partial_fit(x, y)
    estimator = MLPClassifier(max_iter=1).partial_fit(x, y, classes=np.arange(10))
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + "classes="):
        estimator.partial_fit(x, y, classes=np.arange(11))
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + "y with classes"):
        estimator.partial_fit(x, y + 1)


def test_partial_fit_with_early_stopping():
    """Each call holds out validation_fraction (the split fit makes), trains an epoch on the
    rest, and ends with the weights of the best validation score so far: scikit-learn's
    epoch of fit with early stopping. A call that scores worse is undone."""
    x, y = digits()
    fraction = 0.25
    estimator = MLPClassifier(
        hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=0.8, early_stopping=True,
        validation_fraction=fraction, random_state=0, dtype="float64",
    )  # fmt: skip
    # random_state=0 makes the same split at every call: multiclass targets are not stratified.
    _, held_out = train_test_split(
        np.arange(x.shape[0]), random_state=check_random_state(0), test_size=fraction
    )
    undone = 0
    for call in range(12):
        before = [c.copy() for c in estimator.coefs_] if call else None
        estimator.partial_fit(x, y, classes=np.arange(10))
        scores = estimator.validation_scores_
        assert len(scores) == call + 1
        assert estimator.best_validation_score_ == max(scores)
        assert estimator.score(x[held_out], y[held_out]) == estimator.best_validation_score_
        if call and scores[-1] < max(scores[:-1]):
            undone += 1
            for a, b in zip(estimator.coefs_, before):
                np.testing.assert_array_equal(a, b)
    assert undone > 0  # the settings make some epochs worse
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        neural_network.MLPClassifier(early_stopping=True).partial_fit(x, y, classes=np.arange(10))


def test_dtypes():
    x, y = digits()
    default = MLPClassifier(max_iter=2).fit(x, y)
    assert default.coefs_[0].dtype == np.float32  # the default dtype
    assert default.predict_proba(x).dtype == np.float64  # as scikit-learn returns for X float64
    wide = MLPClassifier(max_iter=2, dtype="float64").fit(x, y)
    assert wide.coefs_[0].dtype == np.float64
    kept = MLPClassifier(max_iter=2, dtype="float64").fit(x.astype(np.float32), y)
    assert kept.coefs_[0].dtype == np.float32  # float32 inputs stay float32
    assert kept.predict_proba(x.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + "dtype='float16'"):
        MLPClassifier(dtype="float16").fit(x, y)


def test_sparse_inputs_train_as_dense():
    x, y = digits()
    dense = MLPClassifier(max_iter=4, random_state=0, dtype="float64").fit(x, y)
    for convert in (scipy.sparse.csr_matrix, scipy.sparse.csr_array, scipy.sparse.csc_matrix):
        sparse = MLPClassifier(max_iter=4, random_state=0, dtype="float64").fit(convert(x), y)
        np.testing.assert_allclose(sparse.loss_curve_, dense.loss_curve_, rtol=1e-12)
        assert_scaled_close(sparse.predict_proba(convert(x)), dense.predict_proba(x), 1e-12)


def test_n_threads_and_max_fun():
    x, y = digits()
    reference = MLPClassifier(max_iter=3, random_state=0).fit(x, y)
    unused = MLPClassifier(max_iter=3, random_state=0, max_fun=1).fit(x, y)
    one_thread = MLPClassifier(max_iter=3, random_state=0, n_threads=1).fit(x, y)
    for a, b, c in zip(reference.coefs_, unused.coefs_, one_thread.coefs_):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + "n_threads=0"):
        MLPClassifier(n_threads=0).fit(x, y)


@pytest.mark.parametrize(
    "kind, params, match",
    [
        ("classifier", {"solver": "lbfgs"}, "does not offer 'lbfgs'.+solver='lbfgs'"),
        ("regressor", {"solver": "lbfgs"}, "does not offer 'lbfgs'.+solver='lbfgs'"),
        ("regressor", {"loss": "poisson"}, "does not offer the 'poisson' loss.+loss='poisson'"),
        ("classifier", {"momentum": 1.0}, r"momentum in \[0, 1\)\. Received: momentum=1\.0"),
        ("classifier", {"alpha": -1}, "alpha=-1"),
        ("classifier", {"batch_size": "all"}, "batch_size='all'"),
        ("regressor", {"hidden_layer_sizes": (10, 0)}, r"hidden_layer_sizes=\(10, 0\)"),
        ("regressor", {"activation": "gelu"}, "activation='gelu'"),
        ("regressor", {"learning_rate": "cosine"}, "learning_rate='cosine'"),
        ("classifier", {"n_iter_no_change": 0}, "n_iter_no_change=0"),
        ("classifier", {"validation_fraction": 1.0}, "validation_fraction=1.0"),
    ],
)
def test_refusals(kind, params, match):
    x, y = data_for(kind)
    with pytest.raises(ValueError, match=match) as error:
        ESTIMATORS[kind](**params).fit(x, y)
    assert re.match(EXPECTED_RECEIVED, str(error.value))


def test_sample_weight_refusals():
    x, y = digits()
    for weights, match in [
        (-np.ones(len(y)), "no negative weights"),
        (np.zeros(len(y)), "non-zero weight"),
        (np.ones(3), r"shape \(1797,\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            MLPClassifier(max_iter=1).fit(x, y, sample_weight=weights)


def test_diverging_training_raises():
    x, y = diabetes()
    with pytest.raises(ValueError, match="Expected a finite training loss"):
        MLPRegressor(solver="sgd", learning_rate_init=10.0, max_iter=50).fit(x * 1e3, y)


def test_pipeline_grid_search_cross_validation_and_clone():
    x, y = breast_cancer()
    x_raw = load_breast_cancer(return_X_y=True)[0]
    params = {"hidden_layer_sizes": (16,), "max_iter": 30, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline = make_pipeline(StandardScaler(), MLPClassifier(**params, dtype="float64"))
        oracle = make_pipeline(StandardScaler(), neural_network.MLPClassifier(**params))
        assert pipeline.fit(x_raw, y).score(x_raw, y) == oracle.fit(x_raw, y).score(x_raw, y)
        np.testing.assert_array_equal(
            cross_val_score(MLPClassifier(**params, dtype="float64"), x, y, cv=3),
            cross_val_score(neural_network.MLPClassifier(**params), x, y, cv=3),
        )
        grid = {"alpha": [1e-4, 1.0], "hidden_layer_sizes": [(4,), (16,)]}
        ours = GridSearchCV(MLPRegressor(**params, dtype="float64"), grid, cv=3)
        theirs = GridSearchCV(neural_network.MLPRegressor(**params), grid, cv=3)
        ours.fit(*diabetes())
        theirs.fit(*diabetes())
    assert ours.best_params_ == theirs.best_params_
    np.testing.assert_allclose(
        ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"], rtol=1e-10
    )
    fitted = ours.best_estimator_
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "coefs_")


def test_real_data_as_sklearn():
    """Defaults but for 50 epochs (float32 for fastnaive, float64 for scikit-learn) on the
    bundled sets: scikit-learn's scores (measured: digits 0.967, breast cancer 0.972,
    diabetes R^2 0.320, the same to 1e-6 for both)."""
    for load, estimator, oracle, minimum in [
        (digits, MLPClassifier, neural_network.MLPClassifier, 0.95),
        (breast_cancer, MLPClassifier, neural_network.MLPClassifier, 0.95),
        (diabetes, MLPRegressor, neural_network.MLPRegressor, 0.3),
    ]:
        x, y = load()
        x_train, x_test, y_train, y_test = train_test_split(x, y, random_state=0)
        ours = estimator(random_state=0, max_iter=50)
        theirs = oracle(random_state=0, max_iter=50)
        fit_both(ours, theirs, x_train, y_train)
        ours_score, theirs_score = ours.score(x_test, y_test), theirs.score(x_test, y_test)
        assert ours_score > minimum, load.__name__
        assert abs(ours_score - theirs_score) < 0.005, load.__name__


@pytest.mark.mnist
def test_mnist_subset_as_sklearn(mnist):
    """784-64 relu-10 on 6000 MNIST images, float32 on both sides: scikit-learn's loss curve
    and weights, then its accuracy on the test images."""
    (train_images, train_labels), (test_images, test_labels) = mnist
    x, y = train_images[:6000], train_labels[:6000]
    params = {"hidden_layer_sizes": (64,), "max_iter": 3, "random_state": 0, "alpha": 1e-3}
    ours, theirs = fit_both(*both("classifier", **params), x, y)
    assert ours.coefs_[0].dtype == np.float32
    assert_same_fit(ours, theirs, "float32")
    accuracy = ours.score(test_images, test_labels)
    assert accuracy > 0.88
    assert accuracy == pytest.approx(theirs.score(test_images, test_labels), abs=2e-3)
