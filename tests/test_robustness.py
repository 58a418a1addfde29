"""The classes of docs/robustness.md that no other module's tests own: optimizer state that
follows the weights (3), aliasing (5), sizes beyond 32-bit BLAS (6), hostile files (7),
permissions under concurrent saves (8), true errors and NumPy scalars (9), and interrupts.

Class 1 (a failing rank ends the job) is in test_distributed.py, class 2 (never delete what
the user did not ask to) in test_checkpoints.py and test_cli.py.
"""

import gc
import json
import mmap
import os
import re
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_api import interrupting
from helpers import (
    EXPECTED_RECEIVED,
    IDX_NAMES,
    deflated,
    idx_bytes,
    make_data,
    make_model,
    model_members,
    npy_bytes,
    npy_header,
    synthetic,
    write_gzip,
    write_zip,
)

import fastnaive
from fastnaive import (
    SGD,
    Adam,
    BatchGenerator,
    NaiveDense,
    NaiveSequential,
    _kernels,
    checkpoints,
    engine,
    evaluate_loss,
    fit,
    load_model,
    loss_and_gradients,
    one_training_step,
    update_weights,
)
from fastnaive.callbacks import EarlyStopping, History, LambdaCallback
from fastnaive.datasets import mnist
from fastnaive.saving import save_model

GiB = 1 << 30


def assert_same(actual, expected):
    """Bit for bit: the same computation on the same values."""
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_array_equal(a, e, err_msg=f"weights[{i}]")


def square_model(dtype="float64", n=6):
    """n -> n relu -> n linear: its weights have shapes that images and each other can take."""
    model = NaiveSequential(
        [NaiveDense(n, n, "relu", dtype=dtype), NaiveDense(n, n, None, dtype=dtype)]
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape) for w in model.weights])
    return model


def copy_of(model):
    twin = NaiveSequential(
        [
            NaiveDense(layer.input_size, layer.output_size, layer.activation, dtype=layer.dtype)
            for layer in model.layers
        ]
    )
    twin.set_weights(model.get_weights())
    return twin


# 3. Optimizer state follows the model's weights

STATEFUL = {
    "momentum": lambda: SGD(0.05, momentum=0.9),
    "nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: Adam(0.01),
}


def halved(model):
    return [w * 0.5 for w in model.weights]


def by_set_weights(model, values, tmp_path):
    model.set_weights(values)


def by_loading_into_set_weights(model, values, tmp_path):
    source = copy_of(model)
    source.set_weights(values)
    source.save(tmp_path / "values.npz")
    model.set_weights(load_model(tmp_path / "values.npz").weights)


def by_assigning_loaded_arrays(model, values, tmp_path):
    source = copy_of(model)
    source.set_weights(values)
    source.save(tmp_path / "values.npz")
    loaded = load_model(tmp_path / "values.npz")
    for layer, new in zip(model.layers, loaded.layers, strict=True):
        layer.W, layer.b = new.W, new.b


def by_assigning_copies(model, values, tmp_path):
    for layer, W, b in zip(model.layers, values[::2], values[1::2], strict=True):
        layer.W, layer.b = W.astype(layer.dtype), b.astype(layer.dtype)


REPLACEMENTS = {
    "set_weights": by_set_weights,
    "load_model-then-set_weights": by_loading_into_set_weights,
    "assign-a-loaded-model's-arrays": by_assigning_loaded_arrays,
    "assign-new-arrays": by_assigning_copies,
}


@pytest.mark.parametrize("replace", REPLACEMENTS.values(), ids=REPLACEMENTS.keys())
@pytest.mark.parametrize("make_optimizer", STATEFUL.values(), ids=STATEFUL.keys())
def test_weights_replaced_mid_training_keep_training_with_their_state(
    tmp_path, make_optimizer, replace
):
    """New weights set after epoch 0 of a 3-epoch fit train exactly as they do when set
    between two fits sharing the optimizer: its state follows the weights' positions."""
    x, y = make_data(48)
    model = make_model()
    replaced = {}

    def on_epoch_end(epoch, logs):
        if epoch == 0:
            replaced["values"] = halved(model)
            replace(model, replaced["values"], tmp_path)

    fit(
        model,
        x,
        y,
        3,
        16,
        optimizer=make_optimizer(),
        verbose=0,
        callbacks=[LambdaCallback(on_epoch_end=on_epoch_end)],
    )

    reference, optimizer = make_model(), make_optimizer()
    fit(reference, x, y, 1, 16, optimizer=optimizer, verbose=0)
    reference.set_weights(halved(reference))
    fit(reference, x, y, 2, 16, optimizer=optimizer, verbose=0)
    assert_same(model.weights, reference.weights)
    assert not np.array_equal(model.weights[0], replaced["values"][0])  # it went on training


def test_set_weights_between_steps_keeps_the_optimizer_state(tmp_path):
    x, y = make_data(16)
    model, reference = make_model(), make_model()
    optimizer, reference_optimizer = Adam(0.01), Adam(0.01)
    for step in range(4):
        if step == 2:
            values = halved(model)
            by_loading_into_set_weights(model, values, tmp_path)
            reference.set_weights(values)
        one_training_step(model, x, y, optimizer=optimizer)
        one_training_step(reference, x, y, optimizer=reference_optimizer)
    assert_same(model.weights, reference.weights)


# 5. Aliasing gives the answer of copies

# Each call reads `w`: the model's live arrays [W0, b0, W1, b1], or copies of them. The
# labels are b1 (zeros) viewed as int64: training changes b1 under them.
ALIASED_CALLS = {
    "fit-images": lambda model, w, x, y: fit(model, w[0], y, 3, 2, optimizer=SGD(0.1), verbose=0),
    "fit-images-momentum": lambda model, w, x, y: fit(
        model, w[0], y, 3, 2, optimizer=SGD(0.1, momentum=0.9), verbose=0
    ),
    "fit-labels": lambda model, w, x, y: fit(model, x, w[3].view(np.int64), 3, 2, verbose=0),
    "fit-validation-data": lambda model, w, x, y: fit(
        model, x, y, 2, 2, validation_data=(w[0], y), verbose=0
    ).history["val_loss"],
    "one_training_step": lambda model, w, x, y: one_training_step(
        model, w[0], y, optimizer=SGD(0.1)
    ),
    "loss_and_gradients": lambda model, w, x, y: loss_and_gradients(model, w[0], y),
    "evaluate_loss": lambda model, w, x, y: evaluate_loss(model, w[0], y),
    "set_weights-in-another-order": lambda model, w, x, y: model.set_weights(
        [w[i] for i in (2, 3, 0, 1)]
    ),
    "update_weights-in-another-order": lambda model, w, x, y: update_weights(
        [w[i] for i in (2, 3, 0, 1)], model.weights, 0.5
    ),
    "update_weights-by-themselves": lambda model, w, x, y: update_weights(w, model.weights, 0.5),
    "adam-in-another-order": lambda model, w, x, y: Adam(0.1).apply_gradients(
        zip([w[i] for i in (2, 3, 0, 1)], model.weights)
    ),
}


@pytest.mark.parametrize("call", ALIASED_CALLS.values(), ids=ALIASED_CALLS.keys())
def test_aliased_arguments_give_the_answer_of_copies(call):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(6, 6)), rng.integers(0, 6, 6)
    model, twin = square_model(), square_model()
    for m in (model, twin):
        m.layers[-1].b[:] = 0
    got = call(model, model.weights, x, y)
    expected = call(twin, [w.copy() for w in twin.weights], x, y)
    assert_same(model.weights, twin.weights)
    if isinstance(got, History):
        got, expected = got.history, expected.history
    np.testing.assert_equal(got, expected)


def test_weights_that_overlap_each_other_are_refused():
    model, (x, y) = make_model(), make_data(8)
    W = model.weights[0]
    with pytest.raises(ValueError, match=EXPECTED_RECEIVED + "weights\\[1\\] overlapping"):
        update_weights([np.ones_like(W), np.ones_like(W)], [W, W])
    tied = square_model()
    tied.layers[1].W = tied.layers[0].W
    before = tied.get_weights()
    for call in (
        lambda: fit(tied, x[:, :6], y % 6, 1, verbose=0),
        lambda: one_training_step(tied, x[:, :6], y % 6),
    ):
        with pytest.raises(
            ValueError, match=EXPECTED_RECEIVED + "model.weights\\[2\\] overlapping"
        ):
            call()
    assert_same(tied.weights, before)


def test_weights_tied_after_a_step_are_refused_at_the_next():
    """The model's checks remember the weights that passed them: tying two after a call
    that passed is caught at the next call."""
    model, (x, y) = square_model(), make_data(8)
    x, y = x[:, :6], y % 6
    one_training_step(model, x, y)
    fit(model, x, y, 1, verbose=0)
    model.layers[1].b = model.layers[0].b
    before = model.get_weights()
    for call in (lambda: one_training_step(model, x, y), lambda: fit(model, x, y, 1, verbose=0)):
        with pytest.raises(
            ValueError, match=EXPECTED_RECEIVED + "model.weights\\[3\\] overlapping"
        ):
            call()
    assert_same(model.weights, before)


WEIGHTS_CHANGED_IN_PLACE = {
    "read-only": (lambda w: w.setflags(write=False), "writeable=False"),
    "reshaped": (lambda w: setattr(w, "shape", w.shape[::-1]), "W.shape=(16, 784)"),
}


@pytest.mark.parametrize(
    "change, received", WEIGHTS_CHANGED_IN_PLACE.values(), ids=WEIGHTS_CHANGED_IN_PLACE.keys()
)
def test_a_weight_changed_in_place_after_a_step_is_refused_at_the_next(change, received):
    """Each training call checks the live arrays again, not only new ones: a W made
    read-only or given another shape in place (the same array object) is refused, with the
    layer's message, and nothing is written."""
    model, (x, y) = make_model(), make_data(8)
    one_training_step(model, x, y)
    change(model.layers[0].W)
    before = [w.copy() for w in model.weights]
    for call in (lambda: one_training_step(model, x, y), lambda: fit(model, x, y, 1, verbose=0)):
        with pytest.raises(ValueError, match=r"^Expected W .+" + re.escape(received)):
            call()
    assert_same([w.reshape(b.shape) for w, b in zip(model.weights, before)], before)


# 6. Sizes beyond 32-bit BLAS indices


@pytest.mark.parametrize("chunk", [1, 7, 64, 2**30])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_updates_in_chunks_equal_one_update(monkeypatch, dtype, chunk):
    monkeypatch.setattr(_kernels, "AXPY_CHUNK", chunk)
    rng = np.random.default_rng(3)
    for n in (1, 63, 64, 65, 1000):
        w, g = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
        expected = w - dtype_scalar(dtype, 0.5) * g
        update_weights([g], [w], 0.5)
        np.testing.assert_array_equal(w, expected)


def dtype_scalar(dtype, value):
    return np.dtype(dtype).type(value)


def huge_zeros(n):
    """n float32 zeros on anonymous huge pages (touched, they are 2 MiB at a time)."""
    memory = mmap.mmap(-1, 4 * n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(memory, np.float32, count=n)


@pytest.mark.slow
def test_update_weights_on_more_than_2_31_elements_updates_them_all():
    """0.1.0 cast the size to int: 2**31 + 3 became negative and BLAS did nothing. Uses 17 GiB
    of address space, 8 GiB of it touched (the weight); about 20 s."""
    n = 2**31 + 3
    w, g = huge_zeros(n), huge_zeros(n)
    g[[0, 1, 2**31 - 1, 2**31, n - 1]] = [1, 2, 3, 4, 5]
    update_weights([g], [w], 0.5)
    np.testing.assert_array_equal(
        w[[0, 1, 2, 2**31 - 1, 2**31, n - 2, n - 1]], [-0.5, -1, 0, -1.5, -2, 0, -2.5]
    )


# 7. Hostile files stay cheap


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """{name: (kind, path)} of files of at most 1 MiB that declare or inflate to gigabytes."""
    folder = tmp_path_factory.mktemp("hostile")
    n = 2**26  # an (n, 4) float32 W0 is 1 GiB
    images = GiB // 784  # (images, 28, 28) uint8 is just under 1 GiB: the data that follows
    data = {f"{key}.npy": deflated(npy_bytes(0 * array)) for key, array in synthetic().items()}
    files = {
        "model-whose-W0-inflates-to-1-GiB": (
            "model",
            model_members(n, 4, **{"W0.npy": deflated(npy_header((n, 4), "<f4"), GiB)}),
        ),
        "model-whose-W0-header-declares-2**40-bytes": (
            "model",
            model_members(2**20, 2**20, **{"W0.npy": npy_header((2**20, 2**20), "<f4")}),
        ),
        "model-whose-W0-inflates-unlike-its-architecture": (
            "model",
            model_members(5, 4, **{"W0.npy": deflated(npy_header((GiB // 4,), "<f4"), GiB)}),
        ),
        "model-whose-format-scalar-is-followed-by-1-GiB": (
            "model",
            model_members(5, 4, **{"fastnaive_format.npy": deflated(npy_bytes(np.array(2)), GiB)}),
        ),
        "model-of-a-deeply-nested-architecture": (
            "model",
            model_members(
                5, 4, **{"architecture.npy": npy_bytes(np.array("[" * 120_000 + "]" * 120_000))}
            ),
        ),
        "dataset-whose-x_train-inflates-to-1-GiB": (
            "dataset",
            {
                **data,
                "x_train.npy": deflated(npy_header((images, 28, 28), "|u1"), GiB),
                "y_train.npy": deflated(npy_header((images,), "|u1"), images),
            },
        ),
        "dataset-whose-header-declares-(2**40, 28, 28)": (
            "dataset",
            {
                **data,
                "x_train.npy": npy_header((2**40, 28, 28), "|u1"),
                "y_train.npy": npy_header((2**40,), "|u1"),
            },
        ),
        "idx-gzip-holding-1-GiB-more-than-its-header": (
            "idx",
            deflated(idx_bytes(np.zeros((10, 28, 28), np.uint8)), GiB),
        ),
        "idx-gzip-whose-header-declares-2**31-images": (
            "idx",
            deflated(b"\x00\x00\x08\x03" + b"\x80\x00\x00\x00" + b"\x00\x00\x00\x1c" * 2, 4096),
        ),
        "state-whose-iterations-scalar-is-followed-by-1-GiB": (
            "state",
            {"iterations.npy": deflated(npy_bytes(np.array(3)), GiB)},
        ),
    }
    paths = {}
    for name, (kind, content) in files.items():
        path = folder / name
        if kind == "idx":
            path.mkdir()
            for key, idx_name in IDX_NAMES.items():
                array = synthetic()[key]
                write_gzip_or_plain = idx_bytes(array)
                (path / idx_name).write_bytes(write_gzip_or_plain)
            (path / IDX_NAMES["x_train"]).unlink()
            write_gzip(path / (IDX_NAMES["x_train"] + ".gz"), content)
            size = (path / (IDX_NAMES["x_train"] + ".gz")).stat().st_size
        elif kind == "state":
            path.mkdir()
            model = make_model()
            checkpoints.save(path, model, SGD(0.05, momentum=0.9), 1, 0)
            with np.load(path / checkpoints.STATE_FILE) as state:
                members = {f"{key}.npy": npy_bytes(state[key]) for key in state.files}
            write_zip(path / checkpoints.STATE_FILE, {**members, **content})
            size = (path / checkpoints.STATE_FILE).stat().st_size
        else:
            size = write_zip(path, content).stat().st_size
        assert size <= 1 << 20, (name, size)
        paths[name] = (kind, str(path))
    return paths


# Loads the file in a forked child: the peak memory of a process started by pytest would start
# at pytest's own (Linux keeps it across exec), a fork's starts at its parent's current size.
LOAD = """
import json, os, resource, sys
import numpy as np
import fastnaive
from fastnaive import checkpoints
from fastnaive.datasets import mnist

kind, path = sys.argv[1:]
loaders = {
    "model": lambda: fastnaive.load_model(path),
    "dataset": lambda: mnist.load_data(path),
    "idx": lambda: mnist.load_data(path),
    "state": lambda: checkpoints.load(
        path,
        fastnaive.NaiveSequential(
            [fastnaive.NaiveDense(784, 16, "relu"), fastnaive.NaiveDense(16, 10, "softmax")]
        ),
        fastnaive.SGD(0.05, momentum=0.9),
    ),
}
pid = os.fork()
if pid == 0:
    try:
        loaders[kind]()
        outcome = "loaded"
    except ValueError as error:
        outcome = f"ValueError: {error}"
    print(json.dumps(outcome), flush=True)
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps(peak))
"""


@pytest.mark.parametrize(
    "name",
    [
        "model-whose-W0-inflates-to-1-GiB",
        "model-whose-W0-header-declares-2**40-bytes",
        "model-whose-W0-inflates-unlike-its-architecture",
        "model-whose-format-scalar-is-followed-by-1-GiB",
        "model-of-a-deeply-nested-architecture",
        "dataset-whose-x_train-inflates-to-1-GiB",
        "dataset-whose-header-declares-(2**40, 28, 28)",
        "idx-gzip-holding-1-GiB-more-than-its-header",
        "idx-gzip-whose-header-declares-2**31-images",
        "state-whose-iterations-scalar-is-followed-by-1-GiB",
    ],
)
def test_a_hostile_file_is_refused_with_value_error_in_under_300_mib(hostile, name):
    """Each file is loaded in a new process, whose peak resident memory is measured."""
    kind, path = hostile[name]
    result = subprocess.run(
        [sys.executable, "-c", LOAD, kind, path], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    outcome, peak = map(json.loads, result.stdout.splitlines())
    assert outcome.startswith("ValueError: Expected ")
    assert path in outcome or Path(path).name in outcome
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"


# 8. Saving never widens permissions


def test_saves_from_four_threads_under_umask_077_create_private_files(tmp_path, monkeypatch):
    models = [make_model() for _ in range(4)]
    old = os.umask(0o077)
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("save changed the umask"))
    errors = []

    def save_many(i):
        try:
            for k in range(10):
                save_model(models[i], tmp_path / f"model-{i}-{k}.npz")
                checkpoints.save(tmp_path / f"run-{i}", models[i], SGD(), k + 1, 0)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=save_many, args=(i,)) for i in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert errors == []
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) == 4 * 10 + 4 * 2
    assert {path.stat().st_mode & 0o777 for path in files} == {0o600}


# 9. Errors that are true and name the right thing

NUMPY_SCALARS = {
    "fit": lambda n, r: (
        fit(
            make_model(),
            *make_data(40),
            epochs=n(2),
            batch_size=n(8),
            optimizer=SGD(r(0.25), momentum=r(0.5)),
            validation_split=r(0.25),
            shuffle=True,
            seed=n(3),
            verbose=0,
            callbacks=[EarlyStopping(patience=n(1), min_delta=r(0.5))],
        ).history
    ),
    "adam": lambda n, r: (
        fit(
            make_model(),
            *make_data(16),
            epochs=n(1),
            optimizer=Adam(r(0.25), beta_1=r(0.5), beta_2=r(0.75), epsilon=r(0.5)),
            verbose=0,
        ).history
    ),
    "dense": lambda n, r: NaiveDense(n(3), n(2), "relu", seed=n(4)).W,
    "predict": lambda n, r: make_model().predict(make_data(5)[0], batch_size=n(2)),
    "evaluate_loss": lambda n, r: evaluate_loss(make_model(), *make_data(5), batch_size=n(2)),
    "update_weights": lambda n, r: update_weights([np.ones(3)], [np.zeros(3)], r(0.25)),
    "batches": lambda n, r: len(BatchGenerator(*make_data(10), batch_size=n(3))),
}


@pytest.mark.parametrize("call", NUMPY_SCALARS.values(), ids=NUMPY_SCALARS.keys())
@pytest.mark.parametrize(
    "types", [(np.int64, np.float32), (np.int32, np.float64), (np.uint8, np.float16)]
)
def test_numpy_scalars_are_accepted_wherever_python_numbers_are(call, types):
    int_type, real_type = types
    np.testing.assert_equal(call(int_type, real_type), call(int, float))


def test_an_error_in_validation_data_names_validation_data():
    model, (x, y) = make_model(), make_data(10)
    with pytest.raises(ValueError, match=r"validation_data\[0\]\.shape"):
        fit(model, x, y, 1, validation_data=(x[:, :5], y), verbose=0)
    with pytest.raises(ValueError, match=r"validation_data\[1\]"):
        fit(model, x, y, 1, validation_data=(x, y + 10), verbose=0)


class FakeKerasOptimizer:
    """Stands for a Keras optimizer: it has apply_gradients, for tf.Variables."""

    def apply_gradients(self, pairs):
        raise AssertionError("never called")


FakeKerasOptimizer.__module__ = "keras.src.optimizers.sgd"

BAD_ARGUMENTS = {
    "optimizer-class": (lambda m, x, y: fit(m, x, y, 1, optimizer=SGD), TypeError, "not a class"),
    "optimizer-class-per-step": (
        lambda m, x, y: one_training_step(m, x, y, optimizer=Adam),
        TypeError,
        "not a class",
    ),
    "keras-optimizer": (
        lambda m, x, y: fit(m, x, y, 1, optimizer=FakeKerasOptimizer()),
        TypeError,
        "Keras",
    ),
    "seed-negative": (lambda m, x, y: fit(m, x, y, 1, seed=-1), ValueError, "seed"),
    "seed-float": (lambda m, x, y: fit(m, x, y, 1, seed=1.5), TypeError, "seed"),
    "seed-bool": (lambda m, x, y: fit(m, x, y, 1, seed=True), TypeError, "seed"),
    "checkpoint_dir-bytes": (
        lambda m, x, y: fit(m, x, y, 1, checkpoint_dir=b"run"),
        TypeError,
        "checkpoint_dir",
    ),
    "load_model-bytes": (lambda m, x, y: load_model(b"model.npz"), TypeError, "path"),
    "save-bytes": (lambda m, x, y: m.save(b"model.npz"), TypeError, "path"),
    "save_model-bytes": (lambda m, x, y: save_model(m, b"model.npz"), TypeError, "path"),
    "load_data-bytes": (lambda m, x, y: mnist.load_data(b"mnist.npz"), TypeError, "path"),
    "optimizer-name-not-a-string": (
        lambda m, x, y: fastnaive.optimizers.get(["sgd"]),
        ValueError,
        "optimizer",
    ),
}


@pytest.mark.parametrize("call, error, named", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_a_bad_argument_gets_an_error_saying_so(tmp_path, monkeypatch, call, error, named):
    monkeypatch.chdir(tmp_path)
    model, (x, y) = make_model(), make_data(10)
    before = model.get_weights()
    with pytest.raises(error, match=EXPECTED_RECEIVED) as info:
        call(model, x, y)
    assert named in str(info.value)
    assert_same(model.weights, before)
    assert os.listdir(tmp_path) == []


def test_a_keras_optimizer_is_translated_or_refused_naming_what_is_supported(book):
    import keras

    model, (x, y) = make_model(), make_data(10)
    reference = make_model()
    reference.set_weights(model.get_weights())
    fit(model, x, y, 2, 4, optimizer=keras.optimizers.Adam(0.01, beta_1=0.8), verbose=0)
    fit(reference, x, y, 2, 4, optimizer=Adam(float(np.float32(0.01)), beta_1=0.8), verbose=0)
    assert_same(model.weights, reference.weights)
    with pytest.raises(TypeError, match=r"keras\.optimizers\.SGD .* Received: optimizer=RMSprop"):
        fit(model, x, y, 1, optimizer=keras.optimizers.RMSprop(), verbose=0)


# Interrupts: KeyboardInterrupt at any point leaves a usable model


@pytest.mark.parametrize("make_optimizer", STATEFUL.values(), ids=STATEFUL.keys())
@pytest.mark.parametrize("batch", [0, 3])
def test_an_interrupted_fit_leaves_a_model_that_trains_on(make_optimizer, batch):
    model, (x, y) = make_model(), make_data(48)
    optimizer = make_optimizer()

    def interrupt(index, logs):
        if index == batch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            x,
            y,
            2,
            8,
            optimizer=optimizer,
            verbose=0,
            callbacks=[LambdaCallback(on_batch_end=interrupt)],
        )
    model.check_weights()
    assert np.isfinite(model.predict(x)).all()
    history = fit(model, x, y, 1, 8, optimizer=optimizer, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_an_interrupted_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    first = make_model()
    first.save(path)
    original = np.lib.format.write_array
    written = []

    def interrupted(*args, **kwargs):
        if len(written) == 2:  # two members written, the third interrupted
            raise KeyboardInterrupt
        written.append(original(*args, **kwargs))

    monkeypatch.setattr(np.lib.format, "write_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        square_model().save(path)
    monkeypatch.undo()
    assert len(written) == 2
    assert os.listdir(tmp_path) == ["model.npz"]
    assert_same(load_model(path).weights, first.weights)


def interrupted_save_is_quiet(tmp_path, monkeypatch, method, replacement):
    """Save over a model file with zipfile.ZipFile.`method` replaced (to raise
    KeyboardInterrupt part way): the interrupt comes through, nothing is reported as
    unraisable once the archive is collected, and the previous file stays whole."""
    path = tmp_path / "model.npz"
    first = make_model()
    first.save(path)
    original = getattr(zipfile.ZipFile, method)
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    monkeypatch.setattr(zipfile.ZipFile, method, replacement(original))
    with pytest.raises(KeyboardInterrupt) as caught:
        square_model().save(path)
    monkeypatch.setattr(zipfile.ZipFile, method, original)
    del caught  # and with it the traceback that holds the archive
    gc.collect()
    assert [u.exc_value for u in unraisable] == []
    assert os.listdir(tmp_path) == ["model.npz"]
    assert_same(load_model(path).weights, first.weights)


def test_an_interrupt_as_a_member_opens_leaves_no_archive_to_complain(tmp_path, monkeypatch):
    # The interrupt lands after zipfile has begun a member and before its handle is returned,
    # so that nothing closes the member: the archive then fails to close, and used to say so
    # again on stderr when collected ("Exception ignored in ZipFile.__del__").
    def replacement(original):
        opened = 0

        def interrupted(self, *args, **kwargs):
            nonlocal opened
            handle = original(self, *args, **kwargs)
            opened += 1
            if opened == 3:
                raise KeyboardInterrupt  # the handle, dropped, is collected with the frame
            return handle

        return interrupted

    interrupted_save_is_quiet(tmp_path, monkeypatch, "open", replacement)


INTERRUPTED_SAVE_CODE = r"""
import gc, os, sys, zipfile
import fastnaive
path = os.path.join(sys.argv[1], "model.npz")
layers = [fastnaive.NaiveDense(6, 6, "relu"), fastnaive.NaiveDense(6, 3, "softmax")]
model = fastnaive.NaiveSequential(layers)
model.save(path)
original, opened = zipfile.ZipFile.open, []
def interrupted(self, *args, **kwargs):
    opened.append(original(self, *args, **kwargs))
    if len(opened) == 3:
        raise KeyboardInterrupt
    return opened[-1]
zipfile.ZipFile.open = interrupted
try:
    model.save(path)
except KeyboardInterrupt:
    pass
zipfile.ZipFile.open = original
opened.clear()
gc.collect()
print(sorted(os.listdir(sys.argv[1])))
"""


def test_an_interrupt_inside_the_archives_construction_leaves_nothing_to_complain(
    tmp_path, monkeypatch
):
    # zipfile.ZipFile.__init__ interrupted after it takes the file and before it sets the rest:
    # the half-built archive, collected, must not try to close itself.
    def replacement(original):
        def interrupted(self, file, *args, **kwargs):
            self.fp = file
            raise KeyboardInterrupt

        return interrupted

    interrupted_save_is_quiet(tmp_path, monkeypatch, "__init__", replacement)


def test_an_interrupt_inside_a_readers_archive_construction_leaves_nothing_to_complain(
    tmp_path, monkeypatch
):
    # The same interrupt as a model file is read: the reader closes its file, and the
    # half-built archive, collected, must not try to close itself.
    path = tmp_path / "model.npz"
    make_model().save(path)
    original = zipfile.ZipFile.__init__
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def interrupted(self, file, *args, **kwargs):
        self.fp = file
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "__init__", interrupted)
    with pytest.raises(KeyboardInterrupt) as caught:
        load_model(path)
    monkeypatch.setattr(zipfile.ZipFile, "__init__", original)
    del caught
    gc.collect()
    assert [u.exc_value for u in unraisable] == []
    assert load_model(path).weights


def test_an_interrupted_save_is_quiet_in_python_development_mode(tmp_path):
    # Development mode also reports what a file object's close raises as it is collected:
    # the handle of the member that the interrupt left open writes on as it goes.
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-c", INTERRUPTED_SAVE_CODE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "['model.npz']"


# Class 4: a step is all or nothing


ATOMIC_OPTIMIZERS = {
    "sgd": lambda: SGD(1e-2),
    "sgd-l2": lambda: SGD(1e-2),
    "momentum": lambda: SGD(1e-2, momentum=0.9),
    "nesterov": lambda: SGD(1e-2, momentum=0.9, nesterov=True),
    "adam": lambda: Adam(1e-3),
}


@pytest.mark.parametrize("inputs", ["dense", "mostly-zero", "csr"])
@pytest.mark.parametrize("name", ATOMIC_OPTIMIZERS)
def test_an_interrupted_step_leaves_every_weight_before_or_after_it(name, inputs):
    """KeyboardInterrupt from a signal handler at a random point of one_training_step: the
    weights and the optimizer's state are those before the step or after it, never a mix."""
    import scipy.sparse

    rng = np.random.default_rng(0)
    l2 = 1e-3 if name == "sgd-l2" else 0.0
    sizes = [96, 128, 128, 64, 10]
    layers = [
        NaiveDense(sizes[i], sizes[i + 1], "relu" if i < 3 else "softmax", l2=l2) for i in range(4)
    ]
    model = NaiveSequential(layers)
    x = rng.normal(size=(64, 96)).astype(np.float32)
    if inputs != "dense":
        x[rng.random(x.shape) < 0.8] = 0
    if inputs == "csr":
        x = scipy.sparse.csr_matrix(x)
    y = rng.integers(0, 10, 64)
    optimizer = ATOMIC_OPTIMIZERS[name]()
    twin_optimizer = ATOMIC_OPTIMIZERS[name]()
    twin = NaiveSequential(
        [NaiveDense(s.input_size, s.output_size, s.activation, l2=l2) for s in layers]
    )
    one_training_step(model, x, y, optimizer=optimizer)
    interrupted = 0
    for trial in range(40):
        # CPU-time timers tick in milliseconds: steps run until the interrupt lands.
        before, state = model.get_weights(), optimizer.get_state()
        try:
            with interrupting(float(rng.uniform(1e-4, 4e-3))):
                for _ in range(1000):
                    before, state = model.get_weights(), optimizer.get_state()
                    one_training_step(model, x, y, optimizer=optimizer)
        except KeyboardInterrupt:
            interrupted += 1
        twin.set_weights(before)
        twin_optimizer.set_state(state)
        one_training_step(twin, x, y, optimizer=twin_optimizer)
        outcomes = {"before": (before, state), "after": (twin.weights, twin_optimizer.get_state())}
        now = optimizer.get_state()
        matches = [
            key
            for key, (weights, opt_state) in outcomes.items()
            if all(np.array_equal(a, b) for a, b in zip(model.weights, weights))
            and opt_state["iterations"] == now["iterations"]
            and all(
                np.array_equal(a, b)
                for slot, other in zip(opt_state["slots"], now["slots"])
                for a, b in zip(slot, other)
            )
        ]
        assert matches, f"trial {trial}: the weights and state are neither before nor after"
    assert interrupted > 30


@pytest.mark.parametrize(
    "dtype, rate",
    [("float32", 1e300), ("float64", 1e306), ("float64", 1.4e308)],  # 2 * 1.4e308 overflows
)
def test_an_update_that_overflows_is_undone_and_raises(dtype, rate):
    """SGD(1e300) on float32 weights: the loss is finite, the update is not."""
    model, (x, y) = make_model(dtype), make_data(16, dtype)
    before = model.get_weights()
    optimizer = SGD(rate)
    with pytest.raises(FloatingPointError, match="overflowed"):
        for _ in range(3):
            one_training_step(model, x * 1e3, y, optimizer=optimizer)
            before = model.get_weights()
    assert_same(model.weights, before)
    assert np.isfinite(model.predict(x)).all()


def fit_overflowing_at_batch_2(model, x, y, optimizer, learning_rate):
    """fit in batches of 10 rows, the learning rate raised to learning_rate (unless None)
    after batch 1: FloatingPointError naming batch 2 is expected."""

    def raise_learning_rate(batch, logs):
        if batch == 1 and learning_rate is not None:
            optimizer.learning_rate = learning_rate

    with pytest.raises(FloatingPointError, match="epoch 0, batch 2"):
        fit(
            model,
            x,
            y,
            1,
            10,
            optimizer=optimizer,
            verbose=0,
            callbacks=[LambdaCallback(on_batch_end=raise_learning_rate)],
        )


@pytest.mark.parametrize(
    "make_optimizer, scale, learning_rate",
    [
        (lambda: Adam(1e-3), 1e25, None),  # g**2 overflows Adam's second moment
        (lambda: SGD(1e-3, momentum=0.9), 1e3, 1e38),  # the velocity overflows
        (lambda: SGD(1e-3), 1e3, 1e38),  # learning_rate * g overflows
    ],
    ids=["adam", "momentum", "sgd"],
)
def test_fit_stops_at_an_overflowing_update_with_the_last_finite_step(
    make_optimizer, scale, learning_rate
):
    """An update that overflows float32 while the loss is finite: fit raises
    FloatingPointError naming the epoch and batch; the weights and the optimizer's state are
    those of the last finite step."""
    model, (x, y) = make_model(), make_data(32)
    x = x.copy()
    x[20:30] *= scale  # batches 0 and 1 of 10 rows are ordinary; batch 2 overflows
    optimizer = make_optimizer()
    reference, reference_optimizer = make_model(), make_optimizer()
    reference.set_weights(model.get_weights())
    fit(reference, x[:20], y[:20], 1, 10, optimizer=reference_optimizer, verbose=0)

    fit_overflowing_at_batch_2(model, x, y, optimizer, learning_rate)
    assert_same(model.weights, reference.weights)
    assert optimizer.iterations == reference_optimizer.iterations == 2
    state, reference_state = optimizer.get_state(), reference_optimizer.get_state()
    for mine, theirs in zip(state["slots"], reference_state["slots"], strict=True):
        assert_same(mine, theirs)


def test_a_large_sparse_input_is_guarded_batch_by_batch():
    """Inputs of more rows than engine.SAMPLED_SCAN_ROWS on the sparse kernels are not read
    whole before fit: each batch's largest |x| comes from its grouping. A batch of huge
    values whose update overflows is still caught (undone, FloatingPointError naming it),
    and the batches before it were trained bit for bit as by a fit on the same inputs that
    stops after them (the same inputs: the sparse kernels' cut of the features is placed by
    them)."""
    rng = np.random.default_rng(3)
    n = engine.SAMPLED_SCAN_ROWS + 100
    x, y = make_data(n)
    x[rng.uniform(size=x.shape) < 0.8] = 0  # sparse on every instruction set
    x[20:30] *= 1e3  # batches 0 and 1 of 10 rows are ordinary; batch 2 overflows
    model, reference = make_model(), make_model()
    step = engine.Step(model, 10, x)
    assert step.sparse_input and step.input_bound == np.inf
    optimizer = SGD(1e-3)

    def stop_after_batch_1(batch, logs):
        reference.stop_training = batch == 1

    stopping = LambdaCallback(on_batch_end=stop_after_batch_1)
    fit(reference, x, y, 1, 10, optimizer=SGD(1e-3), verbose=0, callbacks=[stopping])

    fit_overflowing_at_batch_2(model, x, y, optimizer, 1e38)
    assert_same(model.weights, reference.weights)


def test_a_step_near_the_range_that_stays_finite_goes_on():
    """Weights near float32's largest value with a tiny step: guarded, finite, applied as
    usual (the same weights as float64 arithmetic rounded)."""
    model, (x, y) = make_model(), make_data(16)
    model.layers[0].b[:] = 3e37
    expected_model = make_model()
    expected_model.set_weights(model.get_weights())
    _, gradients = loss_and_gradients(expected_model, x, y)
    one_training_step(model, x, y, optimizer=SGD(1e-3))
    for w, w0, g in zip(model.weights, expected_model.weights, gradients):
        np.testing.assert_allclose(w, w0 - np.float32(1e-3) * g, rtol=1e-6, atol=1e-6)
    assert np.isfinite(model.layers[0].b).all()


@pytest.mark.parametrize("inputs", ["dense", "mostly-zero", "csr"])
def test_fused_sgd_with_l2_shrinks_the_weights_and_not_the_biases(inputs):
    """The fused update of a layer with L2 equals loss_and_gradients then w -= lr * g, whose
    L2 term is in dW alone (Keras' kernel_regularizer)."""
    import scipy.sparse

    rng = np.random.default_rng(3)
    layers = [NaiveDense(30, 8, "relu", l2=0.5, seed=1), NaiveDense(8, 4, "softmax", l2=0.25)]
    model = NaiveSequential(layers)
    for layer in model.dense_layers:
        layer.b[:] = rng.normal(size=layer.b.shape)
    x = rng.normal(size=(16, 30)).astype(np.float32)
    if inputs != "dense":
        x[rng.random(x.shape) < 0.8] = 0
    if inputs == "csr":
        x = scipy.sparse.csr_matrix(x)
    y = rng.integers(0, 4, 16)
    _, gradients = loss_and_gradients(model, x, y)
    expected = [w - np.float32(0.1) * g for w, g in zip(model.get_weights(), gradients)]
    one_training_step(model, x, y, optimizer=SGD(0.1))
    for actual, wanted in zip(model.weights, expected, strict=True):
        np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)
