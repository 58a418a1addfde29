"""NaiveSequential's Keras methods: compile, fit, evaluate, predict, summary, _repr_html_ —
the same results as the book's functions, and as Keras' own methods on the same weights."""

import numpy as np
import pytest
from helpers import EXPECTED_RECEIVED, make_data, make_model

import fastnaive
from fastnaive import SGD, Adam, NaiveDense, NaiveSequential


def assert_same_weights(actual, expected):
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_array_equal(a, e, err_msg=f"weights[{i}]")


def test_model_fit_is_fastnaive_fit_with_keras_defaults():
    x, y = make_data(100)
    model, reference = make_model(), make_model()
    reference.set_weights(model.get_weights())
    model.compile(optimizer=Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["acc"])
    history = model.fit(x=x, y=y, epochs=2, verbose=0, seed=3, validation_split=0.2)
    expected = fastnaive.fit(
        reference,
        x,
        y,
        2,
        32,
        optimizer=Adam(1e-2),
        shuffle=True,
        seed=3,
        verbose=0,
        validation_split=0.2,
    )
    assert_same_weights(model.weights, reference.weights)
    assert history.history == expected.history
    assert history.params["batch_size"] == 32 and history.params["shuffle"] is True
    # The optimizer and its state carry on from fit to fit, as Keras' do.
    optimizer = model.optimizer
    model.fit(x, y, verbose=0, seed=4)
    assert model.optimizer is optimizer and optimizer.iterations == 2 * 3 + 4


def test_model_fit_without_compile_trains_with_the_books_sgd():
    x, y = make_data(64)
    model, reference = make_model(), make_model()
    reference.set_weights(model.get_weights())
    model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    fastnaive.fit(reference, x, y, 1, 16, verbose=0)
    assert_same_weights(model.weights, reference.weights)
    assert repr(model.optimizer) == "SGD(learning_rate=0.001)"


def test_evaluate_and_predict_agree_with_keras_on_the_same_weights(book):
    import keras

    from fastnaive.keras import to_keras

    rng = np.random.default_rng(0)
    x = rng.random((300, 20)).astype(np.float32)
    y = rng.integers(0, 4, 300)
    w = rng.random(300).astype(np.float32)
    model = NaiveSequential(
        [NaiveDense(20, 16, "relu", seed=1), NaiveDense(16, 4, "softmax", seed=2, l2=1e-3)]
    )
    theirs = to_keras(model)
    theirs.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    expected = theirs.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    got = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    assert got.keys() == expected.keys() == {"loss", "accuracy"}
    np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], expected["accuracy"], rtol=1e-6)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(
        theirs.evaluate(x, y, verbose=0), rel=1e-5
    )
    np.testing.assert_allclose(
        model.predict(x, verbose=0), theirs.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(model.predict(x, batch_size=7), model.predict(x))
    del keras


def test_evaluate_returns_the_loss_alone_for_regression_and_prints_when_verbose(capsys):
    rng = np.random.default_rng(1)
    model = NaiveSequential([NaiveDense(5, 3, "tanh", seed=0), NaiveDense(3, 1, None)], loss="mse")
    x, y = rng.random((40, 5)), rng.random((40, 1))
    loss = model.evaluate(x, y, verbose=1)
    assert isinstance(loss, float)
    assert capsys.readouterr().out.strip() == f"loss: {loss:.4f}"
    assert loss == pytest.approx(fastnaive.evaluate_loss(model, x, y)[0])


@pytest.mark.parametrize(
    "call, named",
    [
        (lambda m, x, y: m.fit(x, y, steps_per_epoch=3), "steps_per_epoch"),
        (lambda m, x, y: m.fit(x, y, validation_freq=2), "validation_freq"),
        (lambda m, x, y: m.fit(y=y), "Received: x=None"),
        (lambda m, x, y: m.evaluate(x, y, steps=2), "steps"),
        (lambda m, x, y: m.compile(metrics=["auc"]), "metrics"),
        (lambda m, x, y: m.compile(optimizer="rmsprop"), "optimizer"),
        (lambda m, x, y: m.compile(loss="hinge"), "hinge"),
    ],
)
def test_what_the_methods_do_not_offer_is_refused_naming_it(call, named):
    model, (x, y) = make_model(), make_data(10)
    before = model.get_weights()
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED) as info:
        call(model, x, y)
    assert named in str(info.value)
    assert_same_weights(model.weights, before)


def test_compile_sets_the_loss_and_a_keras_optimizer_is_translated(book):
    import keras

    model = NaiveSequential([NaiveDense(4, 1, "sigmoid")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.5), loss="mse")
    assert model.loss.name == "mean_squared_error"
    assert isinstance(model.optimizer, SGD) and model.optimizer.momentum == 0.5


def test_summary_and_html_show_layers_shapes_and_parameter_counts():
    model = NaiveSequential(
        [NaiveDense(784, 512, "relu"), fastnaive.Dropout(0.2), NaiveDense(512, 10, "softmax")]
    )
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert lines[0] == 'Model: "NaiveSequential" (float32, loss sparse_categorical_crossentropy)'
    for needle in ("(None, 512)", "401,920", "Dropout(0.2)", "(None, 10)", "5,130"):
        assert needle in text
    assert "Total params: 407,050 (1.55 MB)" in text
    assert model.count_params() == 407_050
    html = model._repr_html_()
    assert html.startswith("<div><b>NaiveSequential</b>") and "401,920" in html


def test_the_readme_shows_what_summary_prints():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    model = NaiveSequential(
        [NaiveDense(784, 512, "relu"), fastnaive.Dropout(0.2), NaiveDense(512, 10, "softmax")]
    )
    lines = []
    model.summary(print_fn=lines.append)
    assert "```\n" + "\n".join(lines) + "\n```" in readme
