"""fit's History, validation, shuffling, printing and callbacks; evaluate_loss and predict.

The tiny problem is helpers.py's make_model and make_data: a 784-16-10 MLP on 50 random
samples. Accuracies are counts of argmax hits over a sample count, so they are compared
exactly; losses within the per-dtype helpers.TOLERANCES.
"""

import re

import numpy as np
import pytest
from helpers import EXPECTED_RECEIVED, assert_close, assert_same_weights, make_data, make_model

from fastnaive import SGD, BatchGenerator, evaluate_loss, fit, one_training_step, reference
from fastnaive.callbacks import Callback, EarlyStopping, LambdaCallback

N_SAMPLES, BATCH_SIZE = 50, 16  # batches of 16, 16, 16 and 2
N_BATCHES = 4


def short_fit(model, x, y, epochs=2, verbose=0, **settings):
    return fit(model, x, y, epochs, BATCH_SIZE, verbose=verbose, **settings)


# History


def test_history_records_each_epoch():
    history = short_fit(make_model(), *make_data(), epochs=3)
    assert history.epoch == [0, 1, 2]
    assert list(history.history) == ["loss", "accuracy"]
    assert all(len(values) == 3 for values in history.history.values())
    assert history.params == {
        "epochs": 3,
        "batch_size": BATCH_SIZE,
        "samples": N_SAMPLES,
        "steps": N_BATCHES,
        "shuffle": False,
        "initial_epoch": 0,
        "ranks": 1,
        "verbose": 0,
    }


def test_history_records_validation_metrics():
    history = short_fit(make_model(), *make_data(), validation_split=0.2, shuffle=True, seed=0)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(values) == 2 for values in history.history.values())
    assert history.params["samples"] == 40 and history.params["steps"] == 3


def test_accuracy_counts_argmax_hits_before_each_update():
    """A learning rate large enough that each update changes the batch's predictions."""
    model, expected, (x, y) = make_model(), make_model(), make_data()
    history = short_fit(model, x, y, epochs=3, optimizer=SGD(0.05))
    accuracies = []
    for _ in range(3):
        hits = 0
        for x_batch, y_batch in BatchGenerator(x, y, BATCH_SIZE):
            hits += np.sum(np.argmax(expected(x_batch), axis=1) == y_batch)
            one_training_step(expected, x_batch, y_batch, optimizer=SGD(0.05))
        accuracies.append(hits / N_SAMPLES)
    assert history.history["accuracy"] == accuracies
    assert len(set(accuracies)) > 1


# Validation


def evaluations_after_each_epoch(model, x, y):
    """A callback list recording evaluate_loss(model, x, y) at each epoch's end, and that record."""
    record = []

    def evaluate(epoch, logs):
        record.append(evaluate_loss(model, x, y))

    return [LambdaCallback(on_epoch_end=evaluate)], record


def assert_validated_on(history, record, dtype):
    losses, accuracies = zip(*record)
    assert_close(history.history["val_loss"], losses, dtype)
    assert history.history["val_accuracy"] == list(accuracies)


def test_validation_split_holds_out_the_last_samples_before_shuffling(dtype):
    model, (x, y) = make_model(dtype), make_data(dtype=dtype)
    callbacks, record = evaluations_after_each_epoch(model, x[40:], y[40:])
    history = short_fit(
        model, x, y, validation_split=0.2, shuffle=True, seed=1, callbacks=callbacks
    )
    assert_validated_on(history, record, dtype)
    trained_on_the_rest = make_model(dtype)
    short_fit(trained_on_the_rest, x[:40], y[:40], shuffle=True, seed=1)
    for weight, expected in zip(model.weights, trained_on_the_rest.weights, strict=True):
        np.testing.assert_array_equal(weight, expected)  # exact: the same samples in the same order


def test_validation_data_is_evaluated_after_each_epoch(dtype):
    model, (x, y) = make_model(dtype), make_data(dtype=dtype)
    validation = make_data(30, dtype)[0][::-1], np.arange(30) % 10
    callbacks, record = evaluations_after_each_epoch(model, *validation)
    history = short_fit(model, x, y, epochs=3, validation_data=validation, callbacks=callbacks)
    assert_validated_on(history, record, dtype)
    assert history.params["samples"] == N_SAMPLES


BAD_VALIDATION = {
    "data-and-split": {"validation_data": make_data(10), "validation_split": 0.2},
    "split-1": {"validation_split": 1.0},
    "split-negative": {"validation_split": -0.1},
    "split-leaves-no-validation-sample": {"validation_split": 0.01},
    "data-without-labels": {"validation_data": make_data(10)[0]},
}


@pytest.mark.parametrize("settings", BAD_VALIDATION.values(), ids=BAD_VALIDATION.keys())
def test_bad_validation_raises(settings):
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED):
        short_fit(make_model(), *make_data(), **settings)


# Shuffling


def shuffled_weights(seed):
    model = make_model()
    short_fit(model, *make_data(), epochs=3, shuffle=True, seed=seed)
    return model.weights


def test_same_seed_gives_bit_identical_weights():
    for weight, again in zip(shuffled_weights(7), shuffled_weights(7), strict=True):
        np.testing.assert_array_equal(weight, again)  # exact: the same deterministic computation


def test_different_seeds_give_different_weights():
    assert not np.array_equal(shuffled_weights(7)[0], shuffled_weights(8)[0])


def batch_losses_of_a_frozen_model(epochs=2, **settings):
    """(epochs x samples) losses of batches of one sample, and each sample's loss.

    A callback puts the initial weights back after every step, so each batch's
    loss is its sample's loss under the same weights: their sequence is the order.
    """
    model, (x, y) = make_model(), make_data(20)
    initial, losses = model.get_weights(), []

    def record_and_restore(batch, logs):
        losses.append(logs["batch_loss"])
        model.set_weights(initial)

    record = LambdaCallback(on_batch_end=record_and_restore)
    fit(model, x, y, epochs, 1, verbose=0, callbacks=[record], **settings)
    per_sample = [evaluate_loss(model, x[i : i + 1], y[i : i + 1])[0] for i in range(len(x))]
    return np.reshape(losses, (epochs, len(x))), np.array(per_sample)


def test_shuffle_visits_every_sample_once_per_epoch_in_a_new_order():
    losses, per_sample = batch_losses_of_a_frozen_model(shuffle=True, seed=4)
    for epoch_losses in losses:
        assert_close(np.sort(epoch_losses), np.sort(per_sample), "float32")
    assert not np.allclose(losses[0], losses[1])


def test_no_shuffle_keeps_the_books_order():
    losses, per_sample = batch_losses_of_a_frozen_model(shuffle=False, seed=4)
    assert_close(losses, np.tile(per_sample, (2, 1)), "float32")


def test_shuffling_one_full_batch_only_reorders_its_sum(dtype):
    """Images and their labels move together: a permuted full batch gives the same step."""
    model, expected, (x, y) = make_model(dtype), make_model(dtype), make_data(dtype=dtype)
    fit(model, x, y, 2, N_SAMPLES, optimizer=SGD(0.1), shuffle=True, seed=2, verbose=0)
    fit(expected, x, y, 2, N_SAMPLES, optimizer=SGD(0.1), verbose=0)
    assert_same_weights(model, expected)


def test_shuffle_leaves_the_callers_arrays_alone(dtype):
    x, y = make_data(dtype=dtype)
    x_before, y_before = x.copy(), y.copy()
    short_fit(make_model(dtype), x, y, shuffle=True, seed=0)
    np.testing.assert_array_equal(x, x_before)  # exact: untouched
    np.testing.assert_array_equal(y, y_before)


# Printing


def metrics_text(history, epoch):
    return " - ".join(f"{key}: {values[epoch]:.4f}" for key, values in history.history.items())


def test_verbose_book_prints_the_books_lines(capsys):
    short_fit(make_model(), *make_data(), verbose="book")
    lines = capsys.readouterr().out.splitlines()
    assert [re.sub(r": \d+\.\d\d$", ": x.xx", line) for line in lines] == [
        "Epoch 0",
        "loss at batch 0: x.xx",
        "Epoch 1",
        "loss at batch 0: x.xx",
    ]


def test_verbose_2_prints_a_line_per_epoch(capsys):
    history = short_fit(make_model(), *make_data(), validation_split=0.2, verbose=2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines):
        metrics = re.escape(metrics_text(history, epoch))  # "loss: 2.3456 - accuracy: ..."
        assert re.fullmatch(rf"Epoch {epoch + 1}/2 - \d+\.\d\ds - {metrics}", line)


def test_verbose_1_shows_a_progress_bar_per_epoch(capsys):
    history = short_fit(make_model(), *make_data(), verbose=1)
    # Not a terminal: each epoch's bar is printed once, whole, its metrics on the next line.
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and "\r" not in "".join(lines)
    for epoch in range(2):
        bar, metrics = lines[2 * epoch : 2 * epoch + 2]
        assert bar.startswith(f"Epoch {epoch + 1}/2 100%|") and "| 4/4 [" in bar  # 4 batches
        assert metrics == metrics_text(history, epoch)


def test_verbose_0_prints_nothing(capsys):
    short_fit(make_model(), *make_data())
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("verbose", [3, -1, "2", True, None, "progress"], ids=repr)
def test_bad_verbose_raises(verbose):
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + re.escape(f"verbose={verbose!r}")):
        short_fit(make_model(), *make_data(), verbose=verbose)


# Callbacks


class Scripted(Callback):
    """Logs `values[epoch]` as `name` at each epoch's end, for the callbacks after it."""

    def __init__(self, name, values):
        self.name, self.values = name, values

    def on_epoch_end(self, epoch, logs=None):
        logs[self.name] = self.values[epoch]


def epochs_run(values, name="score", **settings):
    """How many epochs (of len(values)) fit runs when EarlyStopping monitors the scripted `name`."""
    model, (x, y) = make_model(), make_data()
    stopping = EarlyStopping(monitor=name, **settings)
    callbacks = [Scripted(name, values), stopping]
    return len(short_fit(model, x, y, epochs=len(values), callbacks=callbacks).epoch)


WORSE_AFTER_EPOCH_1 = [3, 1, 2, 2, 2, 2, 0, 0]
# (values, settings, epochs run): stopped once `patience` epochs in a row did not improve.
# Keras' EarlyStopping runs the same epochs in each case.
STOPPING_CASES = {
    "patience-0": (WORSE_AFTER_EPOCH_1, {"patience": 0}, 3),
    "patience-1": (WORSE_AFTER_EPOCH_1, {"patience": 1}, 3),
    "patience-2": (WORSE_AFTER_EPOCH_1, {"patience": 2}, 4),
    "patience-4": (WORSE_AFTER_EPOCH_1, {"patience": 4}, 6),
    "min_delta": ([3, 2.95, 2.9, 2.85, 2.8], {"min_delta": 0.1}, 2),
    "never-worse": ([5, 4, 3, 2, 1], {}, 5),
}


@pytest.mark.parametrize(
    "values, settings, epochs", STOPPING_CASES.values(), ids=STOPPING_CASES.keys()
)
def test_early_stopping_stops_after_patience_epochs_without_improvement(values, settings, epochs):
    assert epochs_run(values, **settings) == epochs


def test_early_stopping_maximises_accuracy_like_quantities():
    assert epochs_run([0.1, 0.5, 0.4, 0.6], name="val_accuracy_score") == 3


def test_restore_best_weights_puts_back_the_best_epochs():
    model, (x, y) = make_model(), make_data()
    weights_after = []
    record = LambdaCallback(
        on_epoch_end=lambda epoch, logs: weights_after.append(model.get_weights())
    )
    callbacks = [
        Scripted("score", [3, 1, 2, 2, 2]),
        record,
        EarlyStopping("score", patience=1, restore_best_weights=True),
    ]
    short_fit(model, x, y, epochs=5, callbacks=callbacks)
    for weight, best, last in zip(model.weights, weights_after[1], weights_after[-1], strict=True):
        np.testing.assert_array_equal(weight, best)  # exact: a copy of that epoch's weights
        assert not np.array_equal(weight, last)


def test_early_stopping_on_an_unknown_quantity_warns_lists_the_logged_ones_and_goes_on():
    """As Keras does: EarlyStopping() without validation data warns and never stops."""
    message = "'val_loss', which is not among the logged values ['accuracy', 'loss']"
    with pytest.warns(RuntimeWarning, match=re.escape(message)):
        history = short_fit(make_model(), *make_data(), epochs=3, callbacks=[EarlyStopping()])
    assert history.epoch == [0, 1, 2]


def recorder(calls):
    """A LambdaCallback appending (hook, *arguments) to `calls` for every hook."""

    def hook(name):
        return lambda *args: calls.append((name, *args))

    return LambdaCallback(
        **{
            name: hook(name)
            for name in (
                "on_train_begin",
                "on_epoch_begin",
                "on_batch_end",
                "on_epoch_end",
                "on_train_end",
            )
        }
    )


def test_lambda_callback_hooks_are_called_in_order():
    calls = []
    history = short_fit(make_model(), *make_data(), callbacks=[recorder(calls)])
    batches = [("on_batch_end", batch) for batch in range(N_BATCHES)]
    expected = [("on_train_begin", {})]
    for epoch in range(2):
        expected += [("on_epoch_begin", epoch), *batches, ("on_epoch_end", epoch)]
    expected.append(("on_train_end", calls[-2][2]))  # the last epoch's logs, as Keras passes
    assert [call[:2] for call in calls] == expected
    epoch_logs = [call[2] for call in calls if call[0] == "on_epoch_end"]
    assert epoch_logs == [
        {key: values[epoch] for key, values in history.history.items()} for epoch in range(2)
    ]


def test_epoch_loss_is_the_sample_weighted_mean_of_batch_losses():
    calls = []
    history = short_fit(make_model(), *make_data(), epochs=1, callbacks=[recorder(calls)])
    logs = [call[2] for call in calls if call[0] == "on_batch_end"]
    losses = [log["batch_loss"] for log in logs]
    sizes = [16, 16, 16, 2]
    assert_close(history.history["loss"][0], np.average(losses, weights=sizes), "float32")
    # Keras' batch logs: "loss" and "accuracy" are the running means over the epoch so far.
    for k, log in enumerate(logs):
        assert_close(log["loss"], np.average(losses[: k + 1], weights=sizes[: k + 1]), "float32")
    assert logs[-1]["loss"] == history.history["loss"][0]
    assert logs[-1]["accuracy"] == history.history["accuracy"][0]


KERAS_HOOKS = {
    "on_train_begin": lambda logs: None,
    "on_epoch_begin": lambda epoch, logs: None,
    "on_train_end": lambda logs: None,
}


@pytest.mark.parametrize("hook, function", KERAS_HOOKS.items(), ids=KERAS_HOOKS.keys())
def test_lambda_callback_takes_keras_signatures(hook, function):
    short_fit(make_model(), *make_data(), callbacks=[LambdaCallback(**{hook: function})])


def test_setting_stop_training_ends_after_that_epoch():
    model, (x, y) = make_model(), make_data()
    stop = LambdaCallback(
        on_epoch_end=lambda epoch, logs: setattr(model, "stop_training", epoch == 1)
    )
    assert short_fit(model, x, y, epochs=5, callbacks=[stop]).epoch == [0, 1]
    assert short_fit(model, x, y, epochs=3).epoch == [0, 1, 2]  # fit starts with the flag down


# evaluate_loss and predict


@pytest.mark.parametrize("batch_size", [1, 7, 1024], ids=["batch-1", "batch-7", "batch-1024"])
def test_evaluate_loss_matches_reference(dtype, batch_size):
    model, (x, y) = make_model(dtype), make_data(dtype=dtype)
    logits = reference.forward(model, x)[-1]
    loss, accuracy = evaluate_loss(model, x, y, batch_size=batch_size)
    assert_close(loss, reference.softmax_crossentropy(logits, y)[0], dtype)
    assert accuracy == np.mean(np.argmax(logits, axis=1) == y)


@pytest.mark.parametrize("batch_size", [1, 3, 49, 50, 4096])
def test_predict_in_batches_equals_the_whole_call(dtype, batch_size):
    model, (x, _) = make_model(dtype), make_data(dtype=dtype)
    assert_close(model.predict(x, batch_size=batch_size), model(x), dtype)
