"""Regression and binary classification on scikit-learn's bundled real data sets, against
scikit-learn's MLP on the same split, preprocessing, architecture, optimizer settings and
initial weights (scikit-learn is given fastnaive's draw through warm_start).

The scores are means over five seeds; what differs between the two within a seed is only
the shuffling order. Measured: diabetes R^2 0.318 (fastnaive) against 0.314, breast cancer
accuracy 0.959 against 0.958. The README quotes these figures.
"""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import StandardScaler

import fastnaive

SEEDS = range(5)
BATCH = 32


def split(load, **kwargs):
    """Standardised train and test features and the targets, a 75/25 split."""
    x, y = load(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, **kwargs
    )
    scaler = StandardScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_test), y_train, y_test


def model(n_features, hidden, head, loss, l2, seed):
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(
                n_features,
                hidden,
                "relu",
                dtype="float64",
                seed=seed,
                initializer="glorot_uniform",
                l2=l2,
            ),
            fastnaive.NaiveDense(
                hidden,
                1,
                head,
                dtype="float64",
                seed=seed + 100,
                initializer="glorot_uniform",
                l2=l2,
            ),
        ],
        loss=loss,
    )


def sklearn_from(estimator, fastnaive_model, x, y, epochs):
    """Train scikit-learn's estimator for `epochs` from the fastnaive model's weights."""
    estimator.set_params(warm_start=True, max_iter=1, n_iter_no_change=10**6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x, y)  # builds the estimator; its weights are then replaced
        estimator.coefs_ = [layer.W.copy() for layer in fastnaive_model.dense_layers]
        estimator.intercepts_ = [layer.b.copy() for layer in fastnaive_model.dense_layers]
        return estimator.set_params(max_iter=epochs).fit(x, y)


def train(fastnaive_model, x, y, epochs, seed):
    optimizer = fastnaive.Adam(1e-3, epsilon=1e-8)  # scikit-learn's Adam settings
    fastnaive.fit(
        fastnaive_model,
        x,
        y,
        epochs,
        BATCH,
        optimizer=optimizer,
        shuffle=True,
        seed=seed,
        verbose=0,
    )
    return fastnaive_model


def test_regression_on_diabetes_scores_as_scikit_learn_does():
    x_train, x_test, y_train, y_test = split(load_diabetes)
    mean, scale = y_train.mean(), y_train.std()
    targets = (y_train - mean) / scale
    alpha, epochs = 1e-4, 50
    ours, theirs = [], []
    for seed in SEEDS:
        # scikit-learn's squared loss is half the mean squared error: its alpha / (2 batch)
        # penalty is alpha / batch against fastnaive's mean squared error.
        m = model(10, 32, None, "mse", alpha / BATCH, seed)
        estimator = MLPRegressor(
            hidden_layer_sizes=(32,), batch_size=BATCH, alpha=alpha, random_state=seed
        )
        sklearn_from(estimator, m, x_train, targets, epochs)
        theirs.append(r2_score(y_test, estimator.predict(x_test) * scale + mean))
        train(m, x_train, targets, epochs, seed)
        ours.append(r2_score(y_test, m.predict(x_test)[:, 0] * scale + mean))
    assert np.mean(ours) >= np.mean(theirs) - 0.005, (ours, theirs)
    assert np.mean(ours) > 0.25  # well above predicting the mean (R^2 = 0)


def test_binary_classification_on_breast_cancer_scores_as_scikit_learn_does():
    x_train, x_test, y_train, y_test = split(
        load_breast_cancer, stratify=load_breast_cancer().target
    )
    alpha, epochs = 1e-4, 50
    ours, theirs = [], []
    for seed in SEEDS:
        m = model(30, 32, "sigmoid", "binary_crossentropy", alpha / (2 * BATCH), seed)
        estimator = MLPClassifier(
            hidden_layer_sizes=(32,), batch_size=BATCH, alpha=alpha, random_state=seed
        )
        sklearn_from(estimator, m, x_train, y_train, epochs)
        theirs.append(estimator.score(x_test, y_test))
        train(m, x_train, y_train, epochs, seed)
        ours.append(fastnaive.evaluate(m, x_test, y_test))
    one_sample = 1 / len(y_test)
    assert np.mean(ours) >= np.mean(theirs) - one_sample, (ours, theirs)
    assert np.mean(ours) > 0.94


@pytest.mark.parametrize("loss, head", [("mse", None), ("binary_crossentropy", "sigmoid")])
def test_one_output_targets_may_be_a_vector(loss, head):
    m = model(3, 4, head, loss, 0.0, 0)
    x = np.random.default_rng(0).normal(size=(10, 3))
    y = (np.arange(10) % 2).astype(float)
    history = fastnaive.fit(m, x, y, 2, 5, verbose=0)
    assert len(history.history["loss"]) == 2
