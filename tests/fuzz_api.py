"""Fuzz fastnaive's public API with generated calls: random shapes, dtypes, layouts and values,
valid and invalid. Each call must return or raise one of the documented exceptions
(ValueError, TypeError, FloatingPointError; OSError where files are involved); a crash kills
the process, and a call that takes longer than --call-timeout seconds is reported as a hang.

Besides plain calls, strategies check a property of each class of docs/robustness.md:
- alias (5): arguments that are the model's own arrays give the answer of copies;
- scalars (9): NumPy scalars give the outcome of the same Python numbers;
- objects (9): optimizer classes, Keras-like optimizers, bad seeds, bytes paths and bad
  validation_data get a TypeError or ValueError that says so;
- replace (3): weights replaced mid-fit by equal arrays (copies, set_weights, loading a
  saved model) train to the same weights: the optimizer's state follows them;
- interrupt: KeyboardInterrupt from a callback, or from a signal at a random moment, leaves
  a model that predicts and trains on, and an interrupted one_training_step leaves the
  weights before or after it (class 4, all or nothing);
- files (7): damaged and hostile model, dataset, checkpoint and IDX files are loaded or
  refused with ValueError, and never raise the peak memory by more than 300 MiB;
- checkpoint (2): checkpoint folders holding states that name other files, damaged states and
  the user's files: fit never removes or changes a file it did not write;
- umask (8): four threads saving at once create files of mode 0o666 less the umask;
- chunk (6): updates run in chunks of a random size equal one update;
- overflow (4): steps at extreme learning rates, inputs and weights either leave finite
  weights and state or raise FloatingPointError leaving those before the step.
--mpi-jobs N also launches N `fastnaive train --distributed` jobs on 2 ranks, each with a
random failure on a random rank at a random phase (tests/mpi_scripts/faulty_cli.py): each
job must end, non-zero, with one line naming the failure (class 1). --huge also makes one
update of a weight of more than 2**31 - 1 elements, checked at random positions beyond
that index (class 6; 8 GiB touched, about 20 s).

    python tests/fuzz_api.py --calls 100000 --seed 0

prints the number of calls, how many raised each exception, and exits 1 on any
undocumented exception, broken property or hang. tests/test_fuzz.py runs a short version.
"""

import argparse
import collections
import contextlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

import fastnaive
from fastnaive import _kernels, checkpoints
from fastnaive.callbacks import EarlyStopping, LambdaCallback
from fastnaive.datasets import mnist

DOCUMENTED = (ValueError, TypeError, FloatingPointError)
# What loading a file may raise besides: the path's own errors.
FILE_ERRORS = (*DOCUMENTED, OSError)
DTYPES = [
    np.float16,
    np.float32,
    np.float64,
    np.int8,
    np.uint8,
    np.int64,
    np.bool_,
    np.complex64,
    object,
]
LABEL_DTYPES = [np.uint8, np.int8, np.int32, np.int64, np.float32, np.bool_]
ACTIVATIONS = ["relu", "softmax", None, "linear", "tanh", fastnaive.relu, 3]
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, 1e4, -1e4, 1e30, 0.0]
INT_TYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
REAL_TYPES = [np.float16, np.float32, np.float64]
# Values every real type holds exactly.
EXACT_REALS = [0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0, 1.5, -0.5]
# The calls of each kind out of this many (the plain kinds share the rest).
STRATEGIES = {
    "alias": 60,
    "scalars": 50,
    "objects": 30,
    "replace": 20,
    "interrupt": 40,
    "files": 30,
    "checkpoint": 6,
    "umask": 2,
    "chunk": 30,
    "overflow": 30,
}
PLAIN = ["dense", "sequential", "forward", "train", "update", "batches", "set_weights"]
OUT_OF = 1000
# The one_training_step calls that a signal interrupts.
STEPS = 200
# The most a refused file may raise the process's peak resident memory.
FILE_MEMORY = 300 * 2**20
FAULTY_CLI = Path(__file__).parent / "mpi_scripts" / "faulty_cli.py"


class Hang(Exception):
    """A call ran past its time limit."""


class Finding(AssertionError):
    """A call broke the property its strategy checks."""


def check(condition, message):
    if not condition:
        raise Finding(message)


def same_outcome(first, second):
    """Run two thunks; raise Finding unless both return equal values or raise the same type."""
    outcomes = []
    for thunk in (first, second):
        try:
            outcomes.append(("returned", thunk()))
        except DOCUMENTED as error:
            outcomes.append((type(error), None))
    (kind_a, value_a), (kind_b, value_b) = outcomes
    check(kind_a == kind_b, f"outcomes differ: {kind_a} and {kind_b}")
    if kind_a == "returned":
        try:
            np.testing.assert_equal(comparable(value_a), comparable(value_b))
        except AssertionError as error:
            raise Finding(f"results differ: {error}") from None
    elif kind_a is not None:
        raise kind_a("(both raised)")


def comparable(value):
    if isinstance(value, fastnaive.callbacks.History):
        return value.history
    if isinstance(value, fastnaive.NaiveDense):
        return value.W
    return value


class Fuzzer:
    """Draws one random call at a time."""

    def __init__(self, seed, workdir):
        self.rng = np.random.default_rng(seed)
        self.workdir = Path(workdir)
        self.serial = 0

    def choice(self, options):
        return options[self.rng.integers(len(options))]

    def size(self, low=0, high=12):
        return int(self.rng.integers(low, high))

    def array(self, shape, dtype=None):
        dtype = dtype or self.choice(DTYPES)
        values = self.rng.normal(0, self.choice([0.1, 1.0, 100.0]), shape)
        if values.size and self.rng.random() < 0.2:
            values.flat[self.rng.integers(values.size)] = self.choice(SPECIAL_VALUES)
        with np.errstate(invalid="ignore", over="ignore"):
            array = values.astype(dtype)
        return self.layout(array)

    def layout(self, array):
        kind = self.rng.integers(4)
        if kind == 1 and array.ndim == 2:
            return np.asfortranarray(array)
        if kind == 2 and array.ndim >= 1:
            return np.repeat(array, 2, axis=0)[::2]
        if kind == 3:
            array.setflags(write=False)
        return array

    def model(self):
        depth = self.size(1, 4)
        sizes = [self.size(1, 9) for _ in range(depth + 1)]
        dtype = self.choice(["float32", "float64"])
        layers = [
            fastnaive.NaiveDense(sizes[i], sizes[i + 1], "relu", dtype=dtype)
            for i in range(depth - 1)
        ]
        layers.append(
            fastnaive.NaiveDense(sizes[-2], sizes[-1], self.choice(["softmax", None]), dtype=dtype)
        )
        return fastnaive.NaiveSequential(layers)

    def square_model(self):
        """A k -> k -> k model of random weights, and its twin of the same weights."""
        k, dtype = self.size(1, 7), self.choice(["float32", "float64"])
        last = self.choice(["softmax", None])

        def build():
            return fastnaive.NaiveSequential(
                [
                    fastnaive.NaiveDense(k, k, "relu", dtype=dtype),
                    fastnaive.NaiveDense(k, k, last, dtype=dtype),
                ]
            )

        model, twin = build(), build()
        values = [self.rng.normal(0, 0.5, w.shape) for w in model.weights]
        model.set_weights(values)
        twin.set_weights(values)
        return model, twin

    def images(self, model):
        n = self.size(0, 20)
        if self.rng.random() < 0.8:
            return self.array((n, model.input_size))
        return self.array(tuple(self.size(0, 6) for _ in range(self.size(0, 4))))

    def labels(self, model, n):
        if self.rng.random() < 0.8:
            return self.rng.integers(0, model.output_size, n)
        n = n + self.choice([0, 0, 1, -1]) if n else n
        values = self.rng.integers(-2, model.output_size + 2, max(n, 0))
        with np.errstate(invalid="ignore"):
            return values.astype(self.choice(LABEL_DTYPES))

    def optimizer(self):
        return self.choice(
            [
                lambda: fastnaive.SGD(0.05),
                lambda: fastnaive.SGD(0.05, momentum=0.9),
                lambda: fastnaive.SGD(0.05, momentum=0.9, nesterov=True),
                lambda: fastnaive.Adam(0.01),
            ]
        )

    def call(self):
        """Return (name, thunk) for one random public call."""
        draw = self.rng.integers(OUT_OF)
        for kind, share in STRATEGIES.items():
            if draw < share:
                return kind, getattr(self, kind)()
            draw -= share
        return self.plain(self.choice(PLAIN))

    def plain(self, kind):
        if kind == "dense":
            args = (
                self.choice([self.size(-1, 5), 2**31, 2.5]),
                self.size(-1, 5),
                self.choice(ACTIVATIONS),
            )
            return kind, lambda: fastnaive.NaiveDense(
                *args, dtype=self.choice(["float32", "float64", "float16", "int32"])
            )
        if kind == "sequential":
            layers = [
                fastnaive.NaiveDense(self.size(1, 5), self.size(1, 5), self.choice(ACTIVATIONS[:4]))
                for _ in range(self.size(0, 4))
            ]
            return kind, lambda: fastnaive.NaiveSequential(layers)
        model = self.model()
        if kind == "forward":
            x = self.images(model)
            return kind, lambda: model.predict(x, batch_size=self.choice([1, 3, 2048, 0]))
        if kind == "train":
            x = self.images(model)
            y = self.labels(model, len(x) if x.ndim else 0)
            return kind, self.training_call(model, x, y)
        if kind == "update":
            grads = [
                self.array(w.shape, self.choice([np.float32, np.float64, np.int64, object]))
                for w in model.weights
            ]
            return kind, lambda: fastnaive.update_weights(
                grads, model.weights, self.choice([1e-3, 0.0, -1.0, np.nan])
            )
        if kind == "batches":
            x = self.images(model)
            y = self.labels(model, len(x) if x.ndim else 0)
            return kind, lambda: list(fastnaive.BatchGenerator(x, y, self.size(-1, 6)))
        weights = [self.array(self.choice([w.shape, (1,)])) for w in model.weights]
        return kind, lambda: model.set_weights(weights)

    def training_call(self, model, x, y):
        optimizer = self.choice([None, "sgd", "adam", "momentum", fastnaive.Adam(1e-3)])
        calls = [
            lambda: fastnaive.loss_and_gradients(model, x, y),
            lambda: fastnaive.one_training_step(model, x, y),
            lambda: fastnaive.evaluate(model, x, y),
            lambda: fastnaive.evaluate_loss(model, x, y, batch_size=self.size(-1, 8)),
            lambda: fastnaive.fit(
                model,
                x,
                y,
                epochs=self.size(-1, 3),
                batch_size=self.size(-1, 8),
                optimizer=optimizer,
                shuffle=bool(self.rng.integers(2)),
                seed=1,
                validation_split=self.choice([0.0, 0.25, 1.5]),
                verbose=self.choice([0, 0, 0, 2, 5]),
            ),
        ]
        return self.choice(calls)

    # 5. Aliasing

    def alias(self):
        """A call reading the model's own arrays (or views of them) against the same call
        on a twin model reading copies."""
        model, twin = self.square_model()
        k = model.input_size
        for m in (model, twin):
            m.layers[-1].b[:] = 0  # zeros: their int64 view is valid labels
        y = self.rng.integers(0, k, k)
        x = self.rng.normal(size=(k, k))
        make_optimizer = self.optimizer()
        epochs, batch_size = self.size(1, 3), self.size(1, 5)
        shuffle, order = bool(self.rng.integers(2)), list(self.rng.permutation(4))
        view = self.choice([lambda a: a, lambda a: a[::-1], lambda a: a.T])

        def images(w):
            return view(w[0])

        def labels(w):
            return w[3].view(np.int64) if w[3].dtype == np.float64 else y

        calls = [
            lambda m, w: fastnaive.fit(
                m,
                images(w),
                y,
                epochs,
                batch_size,
                optimizer=make_optimizer(),
                verbose=0,
                shuffle=shuffle,
                seed=3,
            ),
            lambda m, w: fastnaive.fit(m, x, labels(w), epochs, batch_size, verbose=0),
            lambda m, w: fastnaive.fit(
                m, x, y, epochs, batch_size, validation_data=(images(w), labels(w)), verbose=0
            ),
            lambda m, w: fastnaive.one_training_step(
                m, images(w), labels(w), optimizer=make_optimizer()
            ),
            lambda m, w: fastnaive.loss_and_gradients(m, images(w), y),
            lambda m, w: fastnaive.evaluate_loss(m, images(w), labels(w)),
            lambda m, w: m.set_weights([w[i] for i in order]),
            lambda m, w: fastnaive.update_weights([w[i] for i in order], m.weights, 0.25),
            lambda m, w: make_optimizer().apply_gradients(zip([w[i] for i in order], m.weights)),
        ]
        call = self.choice(calls)

        def run():
            same_outcome(
                lambda: call(model, model.weights),
                lambda: call(twin, [w.copy() for w in twin.weights]),
            )
            for a, b in zip(model.weights, twin.weights, strict=True):
                check(np.array_equal(a, b, equal_nan=True), "aliased weights differ from copies")

        return run

    # 9. NumPy scalars and bad objects

    def scalars(self):
        """The same call with Python numbers and with NumPy scalars of random types."""
        ints = [self.size(-1, 5) for _ in range(4)]
        reals = [self.choice(EXACT_REALS) for _ in range(4)]
        int_types = [self.choice(INT_TYPES) for _ in ints]
        real_types = [self.choice(REAL_TYPES) for _ in reals]
        x, y = self.rng.normal(size=(12, 4)), self.rng.integers(0, 3, 12)
        seed = self.size(0, 100)
        calls = [
            lambda i, r: fastnaive.fit(
                model_of(4, 3, seed),
                x,
                y,
                epochs=i[0],
                batch_size=i[1],
                validation_split=r[0],
                optimizer=fastnaive.SGD(r[1], momentum=r[2]),
                shuffle=True,
                seed=i[2],
                verbose=0,
                callbacks=[EarlyStopping(monitor="loss", patience=i[3], min_delta=r[3])],
            ),
            lambda i, r: fastnaive.fit(
                model_of(4, 3, seed),
                x,
                y,
                i[0],
                optimizer=fastnaive.Adam(r[0], beta_1=r[1], beta_2=r[2], epsilon=r[3]),
                verbose=0,
            ),
            lambda i, r: fastnaive.NaiveDense(i[0], i[1], "relu", seed=i[2]),
            lambda i, r: model_of(4, 3, seed).predict(x, batch_size=i[0]),
            lambda i, r: fastnaive.evaluate_loss(model_of(4, 3, seed), x, y, batch_size=i[0]),
            lambda i, r: fastnaive.update_weights([np.ones(3)], [np.zeros(3)], r[0]),
            lambda i, r: len(fastnaive.BatchGenerator(x, y, batch_size=i[0])),
        ]
        call = self.choice(calls)

        def as_numpy():
            with np.errstate(over="ignore"):
                i = [
                    t(v) if v >= 0 or np.issubdtype(t, np.signedinteger) else v
                    for t, v in zip(int_types, ints)
                ]
            return call(i, [t(v) for t, v in zip(real_types, reals)])

        return lambda: same_outcome(lambda: call(ints, reals), as_numpy)

    def objects(self):
        """Arguments of the wrong kind: each must raise TypeError or ValueError saying so."""
        model = model_of(4, 3, 0)
        x, y = self.rng.normal(size=(8, 4)), self.rng.integers(0, 3, 8)
        bad_x = self.choice([x[:, :3], x.astype(complex), x[0]])
        bad_y = self.choice([y + 3, y.astype(float), y[:-1]])
        path = self.choice([b"model.npz", bytearray(b"x"), 3])
        cases = [
            (
                lambda: fastnaive.fit(
                    model, x, y, 1, optimizer=self.choice([fastnaive.SGD, fastnaive.Adam])
                ),
                "class",
            ),
            (lambda: fastnaive.one_training_step(model, x, y, optimizer=KerasLike()), "Keras"),
            (lambda: fastnaive.fit(model, x, y, 1, optimizer=KerasLike()), "Keras"),
            (
                lambda: fastnaive.fit(model, x, y, 1, seed=self.choice([-1, 2**63, 1.5, True])),
                "seed",
            ),
            (
                lambda: fastnaive.fit(model, x, y, 1, validation_data=(bad_x, y), verbose=0),
                "validation_data[0]",
            ),
            (
                lambda: fastnaive.fit(model, x, y, 1, validation_data=(x, bad_y), verbose=0),
                "validation_data[1]",
            ),
            (lambda: fastnaive.load_model(path), "path"),
            (lambda: model.save(b"model.npz"), "path"),
            (lambda: mnist.load_data(path), "path"),
            (lambda: fastnaive.fit(model, x, y, 1, checkpoint_dir=path), "checkpoint_dir"),
            (lambda: fastnaive.optimizers.get(self.choice([["sgd"], None, 3])), "optimizer"),
        ]
        call, named = self.choice(cases)

        def run():
            before = model.get_weights()
            try:
                call()
            except (TypeError, ValueError) as error:
                check(named in str(error), f"error does not name {named}: {error}")
            else:
                raise Finding(f"no error for a bad {named}")
            for a, b in zip(model.weights, before, strict=True):
                check(np.array_equal(a, b), "a refused call changed the weights")

        return run

    # 3. Optimizer state follows the weights

    def replace(self):
        """A fit whose callback replaces the weights by equal arrays must end as one without."""
        epochs, batch_size, seed = self.size(1, 4), self.size(1, 9), self.size(0, 100)
        x, y = self.rng.normal(size=(20, 5)), self.rng.integers(0, 4, 20)
        make_optimizer = self.optimizer()
        hook = self.choice(["on_batch_end", "on_epoch_end", "on_epoch_begin"])
        when = self.size(0, 3)
        path = self.workdir / "replace.npz"
        how = self.choice(
            [
                lambda m: [setattr(layer, "W", layer.W.copy()) for layer in m.layers],
                lambda m: [setattr(layer, "b", layer.b.copy()) for layer in m.layers],
                lambda m: m.set_weights(m.get_weights()),
                lambda m: (m.save(path), m.set_weights(fastnaive.load_model(path).weights)),
                lambda m: (
                    m.save(path),
                    [
                        (setattr(a, "W", b.W), setattr(a, "b", b.b))
                        for a, b in zip(m.layers, fastnaive.load_model(path).layers)
                    ],
                ),
            ]
        )

        def train(model, callbacks):
            fastnaive.fit(
                model,
                x,
                y,
                epochs,
                batch_size,
                optimizer=make_optimizer(),
                shuffle=True,
                seed=3,
                verbose=0,
                callbacks=callbacks,
            )
            return model.weights

        def replacing(model):
            def at(index, logs=None):
                if index == when:
                    how(model)

            return [LambdaCallback(**{hook: at})]

        def run():
            model = model_of(5, 4, seed)
            got = train(model, replacing(model))
            expected = train(model_of(5, 4, seed), [])
            for a, b in zip(got, expected, strict=True):
                check(np.array_equal(a, b), "weights replaced by equal arrays trained otherwise")

        return run

    # Interrupts

    def interrupt(self):
        """KeyboardInterrupt from a callback or a signal: the model must stay usable."""
        model = model_of(5, 4, self.size(0, 100))
        x, y = self.rng.normal(size=(40, 5)), self.rng.integers(0, 4, 40)
        make_optimizer = self.optimizer()
        delay = float(self.rng.uniform(1e-5, 1e-3))
        at_batch = self.size(0, 10)  # of the 10 batches of an epoch
        path = self.workdir / "interrupted.npz"
        calls = [
            lambda cb: fastnaive.fit(
                model,
                x,
                y,
                3,
                4,
                optimizer=make_optimizer(),
                verbose=0,
                callbacks=cb,
                shuffle=True,
                seed=1,
            ),
            lambda cb: [fastnaive.one_training_step(model, x, y) for _ in range(STEPS)],
            lambda cb: [model.save(path) for _ in range(20)],
            lambda cb: [fastnaive.load_model(path) for _ in range(20)] if path.exists() else None,
            lambda cb: [fastnaive.evaluate_loss(model, x, y, batch_size=3) for _ in range(50)],
        ]
        call = self.choice(calls)
        by_signal = call is not calls[0] or bool(self.rng.integers(2))
        one_step = call is calls[1]

        def raise_at(batch, logs):
            if batch == at_batch:
                raise KeyboardInterrupt

        def run():
            before = model.get_weights()
            interrupted = False
            try:
                with interrupting(delay if by_signal else None):
                    call(None if by_signal else [LambdaCallback(on_batch_end=raise_at)])
            except KeyboardInterrupt:
                interrupted = True
            model.check_weights()
            if one_step and interrupted:
                check_step_atomicity(model, before, x, y)
            check(model.predict(x).shape == (40, 4), "an interrupted model no longer predicts")
            fastnaive.fit(model, x, y, 1, 8, optimizer=make_optimizer(), verbose=0)
            if path.exists():
                fastnaive.load_model(path)  # a file saved whole, or the previous one
            check(not list(self.workdir.glob(".fastnaive-*")), "an interrupted save left a file")
            return "interrupted" if interrupted else None

        return run

    # 4. An overflowing step is undone

    def overflow(self):
        """Extreme learning rates, inputs or weights: every weight and state value stays
        finite, and a step that raises FloatingPointError leaves those before it."""
        dtype = self.choice(["float32", "float64"])
        big = float(np.finfo(dtype).max)
        model = fastnaive.NaiveSequential(
            [
                fastnaive.NaiveDense(5, 6, "relu", dtype=dtype, seed=self.size(0, 99)),
                fastnaive.NaiveDense(6, 4, self.choice(["softmax", None]), dtype=dtype),
            ]
        )
        rate = float(big ** self.rng.uniform(-0.2, 1.0))
        optimizer = self.choice(
            [
                lambda: fastnaive.SGD(rate),
                lambda: fastnaive.SGD(rate, momentum=0.9, nesterov=bool(self.rng.integers(2))),
                lambda: fastnaive.Adam(min(rate, 1e30)),
            ]
        )()
        x = (self.rng.normal(size=(8, 5)) * big ** self.rng.uniform(0, 0.6)).astype(dtype)
        if self.rng.random() < 0.3:
            layer = model.layers[self.size(0, 2)]
            layer.b[self.size(0, layer.b.size)] = big * self.rng.uniform(0.5, 1.0)
        y = self.rng.integers(0, 4, 8)
        use_fit = bool(self.rng.integers(2))

        def run():
            for _ in range(3):
                before, state = model.get_weights(), optimizer.get_state()
                try:
                    if use_fit:
                        fastnaive.fit(model, x, y, 1, 4, optimizer=optimizer, verbose=0)
                    else:
                        fastnaive.one_training_step(model, x, y, optimizer=optimizer)
                except FloatingPointError:
                    if not use_fit:
                        same = all(np.array_equal(a, b) for a, b in zip(model.weights, before))
                        check(same, "an undone step changed the weights")
                        check(
                            optimizer.get_state()["iterations"] == state["iterations"],
                            "an undone step was counted",
                        )
                    raise
                finally:
                    values = [*model.weights, *sum(optimizer.get_state()["slots"], [])]
                    check(
                        all(np.isfinite(v).all() for v in values),
                        "a step left a non-finite weight or state value",
                    )

        return run

    # 7. Hostile files

    def files(self):
        """A damaged or hostile file, loaded: returned or ValueError, and cheap either way."""
        self.serial += 1
        folder = self.workdir / f"files-{self.serial}"
        folder.mkdir()
        kind = self.choice(["model", "dataset", "state", "idx"])
        target = hostile_file(self, kind, folder)
        loaders = {
            "model": lambda: fastnaive.load_model(target),
            "dataset": lambda: mnist.load_data(target),
            "idx": lambda: mnist.load_data(folder),
            "state": lambda: checkpoints.load(
                folder, model_of(5, 4, 0), fastnaive.SGD(0.1, momentum=0.5)
            ),
        }

        def run():
            peak = peak_memory()
            try:
                loaders[kind]()
            except FILE_ERRORS:
                raise
            finally:
                shutil.rmtree(folder)
                check(peak_memory() - peak < FILE_MEMORY, f"a {kind} file cost > 300 MiB")

        return run

    # 2. Checkpoint folders

    def checkpoint(self):
        """fit into a folder holding the user's files and a state that may name them."""
        self.serial += 1
        root = self.workdir / f"checkpoint-{self.serial}"
        folder = root / "run"
        folder.mkdir(parents=True)
        user_files = {
            root / "keep.npz": b"outside",
            folder / "notes.txt": b"the user's notes",
            folder / "model-0099.npz.bak": b"the user's, named by no state",
            folder / "sub" / "model-0001.npz": b"in a subfolder",
        }
        for path, data in user_files.items():
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
        x, y = self.rng.normal(size=(12, 5)), self.rng.integers(0, 4, 12)
        prior = self.choice(["none", "checkpoint", "hostile-name", "damaged"])
        resume = bool(self.rng.integers(2))
        name = self.choice(
            [
                "../keep.npz",
                str(root / "keep.npz"),
                "sub/model-0001.npz",
                "model-0099.npz",
                "notes.txt",
                "",
                "model-0001.npz/../../keep.npz",
            ]
        )

        def run():
            try:
                if prior != "none":
                    fastnaive.fit(model_of(5, 4, 0), x, y, 1, 4, verbose=0, checkpoint_dir=folder)
                if prior == "hostile-name":
                    rewrite_state(folder, model=np.array(name))
                if prior == "damaged":
                    state = folder / checkpoints.STATE_FILE
                    state.write_bytes(state.read_bytes()[: self.size(0, 200)])
                before = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
                try:
                    fastnaive.fit(
                        model_of(5, 4, 0),
                        x,
                        y,
                        2,
                        4,
                        verbose=0,
                        checkpoint_dir=folder,
                        resume=resume,
                    )
                except FILE_ERRORS:
                    if prior != "none" and not resume:
                        after = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
                        check(after == before, "a refused run changed the checkpoint folder")
                    raise
                check(resume or prior == "none", "a run without resume replaced a checkpoint")
            finally:
                for path, data in user_files.items():
                    check(path.read_bytes() == data, f"{path.name} was changed or removed")
                shutil.rmtree(root)

        return run

    # 8. Permissions

    def umask(self):
        """Four threads save at once under a random umask: every file gets 0o666 less it."""
        self.serial += 1
        folder = self.workdir / f"umask-{self.serial}"
        folder.mkdir()
        mask = self.choice([0o077, 0o027, 0o022, 0o002, 0o000])
        models = [model_of(5, 4, i) for i in range(4)]

        errors = []

        def save(i):
            try:
                for k in range(3):
                    models[i].save(folder / f"m{i}-{k}.npz")
                checkpoints.save(folder / f"run{i}", models[i], fastnaive.SGD(), 1, 0)
            except Exception as error:  # raised again in the calling thread
                errors.append(error)

        def run():
            old = os.umask(mask)
            try:
                threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            finally:
                os.umask(old)
            if errors:
                raise errors[0]
            modes = {p.stat().st_mode & 0o777 for p in folder.rglob("*") if p.is_file()}
            shutil.rmtree(folder)
            check(modes == {0o666 & ~mask}, f"modes {sorted(map(oct, modes))} under {mask:o}")

        return run

    # 6. Sizes beyond 32-bit BLAS

    def chunk(self):
        """An update in BLAS calls of a random number of elements equals NumPy's."""
        chunk = self.size(1, 40)
        dtype = self.choice([np.float32, np.float64])
        shapes = [tuple(self.size(1, 20) for _ in range(self.size(1, 3))) for _ in range(3)]
        gradients = [self.rng.normal(size=s).astype(dtype) for s in shapes]
        weights = [self.rng.normal(size=s).astype(dtype) for s in shapes]
        rate = self.choice([0.25, 0.5, 1.0])

        def run():
            expected = [w - dtype(rate) * g for w, g in zip(weights, gradients)]
            old = _kernels.AXPY_CHUNK
            _kernels.AXPY_CHUNK = chunk
            try:
                fastnaive.update_weights(gradients, weights, rate)
            finally:
                _kernels.AXPY_CHUNK = old
            for w, e in zip(weights, expected):
                check(np.array_equal(w, e), f"an update in chunks of {chunk} differs")

        return run


class KerasLike:
    """Looks like a Keras optimizer: apply_gradients, for tf.Variables."""

    def apply_gradients(self, pairs):
        raise Finding("a Keras-like optimizer was used")


KerasLike.__module__ = "keras.src.optimizers.adam"


def model_of(n_in, n_out, seed):
    """A seeded n_in -> 6 relu -> n_out softmax model."""
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(n_in, 6, "relu", seed=seed, initializer="glorot_uniform"),
            fastnaive.NaiveDense(6, n_out, "softmax", seed=seed + 1, initializer="glorot_uniform"),
        ]
    )


def check_step_atomicity(model, before, x, y):
    """Class 4's promise: an interrupted step leaves the weights as
    they were before some step, or after it; never part way."""
    twin = model_of(5, 4, 0)
    twin.set_weights(before)
    states = [twin.get_weights()]
    for _ in range(STEPS):
        fastnaive.one_training_step(twin, x, y)
        states.append(twin.get_weights())
    check(
        any(all(np.array_equal(a, b) for a, b in zip(model.weights, s)) for s in states),
        "an interrupted step left the weights part way",
    )


# An interrupt that lands in pytest's own code (its hook formatting an exception that a
# finalizer could not raise, run by the garbage collector inside the fuzzed call) fails
# pytest instead of testing the call: it is put off by this much CPU time until it lands
# elsewhere.
RETRY_SECONDS = 0.001


def in_pytest(frame):
    """True when pytest's code runs nearer the top of the stack than the fuzzed code."""
    while frame is not None:
        name = frame.f_code.co_filename
        if f"{os.sep}_pytest{os.sep}" in name:
            return True
        if name == __file__ or f"{os.sep}fastnaive{os.sep}" in name:
            return False
        frame = frame.f_back
    return False


@contextlib.contextmanager
def interrupting(delay):
    """Raise KeyboardInterrupt after `delay` seconds of CPU time (None: never)."""
    if delay is None:
        yield
        return
    armed = [True]

    def handler(signum, frame):
        if not armed[0]:
            return
        if in_pytest(frame):
            signal.setitimer(signal.ITIMER_PROF, RETRY_SECONDS)  # once pytest is done
            return
        armed[0] = False
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGPROF, handler)
    signal.setitimer(signal.ITIMER_PROF, delay)
    try:
        yield
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def peak_memory():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rewrite_state(folder, **changes):
    path = folder / checkpoints.STATE_FILE
    with np.load(path) as data:
        state = {**dict(data), **changes}
    np.savez(path, **state)


def hostile_file(fuzzer, kind, folder):
    """Write a valid file of `kind` into `folder`, then damage it at random; return its path."""
    rng = fuzzer.rng
    if kind == "idx":
        data = mnist_like(rng)
        names = {
            "x_train": "train-images-idx3-ubyte",
            "y_train": "train-labels-idx1-ubyte",
            "x_test": "t10k-images-idx3-ubyte",
            "y_test": "t10k-labels-idx1-ubyte",
        }
        for key, name in names.items():
            raw = idx_bytes(data[key])
            (folder / f"{name}.gz").write_bytes(zlib_gzip(raw))
        target = folder / f"{fuzzer.choice(list(names.values()))}.gz"
        raw = gunzip(target.read_bytes())
        damage = fuzzer.choice(["bomb", "header", "truncate", "flip", "short"])
        if damage == "bomb":
            target.write_bytes(zlib_gzip(raw + bytes(int(rng.integers(1, 64)) << 20)))
        elif damage == "header":
            dims = np.frombuffer(raw[4:16] if raw[3] == 3 else raw[4:8], ">u4").copy()
            dims[0] = fuzzer.choice([2**31, 2**32 - 1, dims[0] + 1])
            target.write_bytes(
                zlib_gzip(raw[:4] + dims.astype(">u4").tobytes() + raw[4 + 4 * len(dims) :])
            )
        else:
            target.write_bytes(damaged_bytes(fuzzer, target.read_bytes(), damage))
        return folder
    if kind == "model":
        target = folder / "model.npz"
        model_of(5, 4, 0).save(target)
    elif kind == "state":
        fastnaive.fit(
            model_of(5, 4, 0),
            np.ones((4, 5)),
            np.arange(4) % 4,
            1,
            2,
            verbose=0,
            optimizer=fastnaive.SGD(0.1, momentum=0.5),
            checkpoint_dir=folder,
        )
        target = folder / checkpoints.STATE_FILE
    else:
        target = folder / "mnist.npz"
        np.savez(target, **mnist_like(rng))
    with np.load(target) as data:
        arrays = {key: data[key] for key in data.files}
    damage = fuzzer.choice(
        ["truncate", "flip", "short", "bomb", "header", "member", "nested", "extra"]
    )
    key = fuzzer.choice(sorted(arrays))
    if damage in ("truncate", "flip", "short"):
        target.write_bytes(damaged_bytes(fuzzer, target.read_bytes(), damage))
        return target
    members = {f"{k}.npy": npy(v) for k, v in arrays.items()}
    if damage == "bomb":  # a member that inflates to many times the file
        members[f"{key}.npy"] = deflate(npy(arrays[key]) + bytes(int(rng.integers(1, 64)) << 20))
    elif damage == "header":  # a header declaring a huge shape over the same data
        shape = (fuzzer.choice([2**31, 2**40, 10**6]), *arrays[key].shape[1:])
        members[f"{key}.npy"] = npy_header(shape, arrays[key].dtype) + arrays[key].tobytes()
    elif damage == "member":  # a member that is not an .npy, or of Python objects
        members[fuzzer.choice(["notes.txt", f"{key}.npy"])] = b"\x93NUMPY not really"
    elif damage == "nested" and "architecture" in arrays:
        depth = int(rng.integers(1, 200_000))
        members["architecture.npy"] = deflate(npy(np.array("[" * depth + "]" * depth)))
    else:  # an extra member
        members[f"extra{int(rng.integers(10))}.npy"] = npy(np.zeros(3))
    write_members(target, members)
    return target


def mnist_like(rng):
    return {
        "x_train": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 6).astype(np.uint8),
        "x_test": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 4).astype(np.uint8),
    }


def damaged_bytes(fuzzer, data, damage):
    rng = fuzzer.rng
    if damage == "truncate":
        return data[: int(rng.integers(0, len(data)))]
    if damage == "short":
        return data[: max(0, len(data) - int(rng.integers(1, 64)))]
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 8))):
        data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
    return bytes(data)


def idx_bytes(array):
    code = {"u1": 0x08}[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def zlib_gzip(raw):
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(raw) + compressor.flush()


def gunzip(data):
    return zlib.decompress(data, 31)


def npy(array):
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def npy_header(shape, dtype):
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    )
    return out.getvalue()


class deflate(bytes):
    """Member data to be deflated (level 9) rather than stored."""


def write_members(path, members):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            method = zipfile.ZIP_DEFLATED if isinstance(data, deflate) else zipfile.ZIP_STORED
            archive.writestr(name, bytes(data), compress_type=method, compresslevel=9)


def on_alarm(signum, frame):
    raise Hang()


def fuzz(calls, seed, call_timeout=10.0):
    """Run `calls` generated calls; return (counts by outcome, list of failures)."""
    counts = collections.Counter()
    failures = []
    signal.signal(signal.SIGALRM, on_alarm)
    with tempfile.TemporaryDirectory(prefix="fastnaive-fuzz-") as workdir:
        fuzzer = Fuzzer(seed, workdir)
        for i in range(calls):
            try:
                name, thunk = fuzzer.call()
            except DOCUMENTED:
                counts["setup raised"] += 1
                continue
            signal.setitimer(signal.ITIMER_REAL, call_timeout)
            try:
                with np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
                    result = thunk()
                counts["returned"] += 1
                if result == "interrupted":
                    counts["interrupted"] += 1
            except DOCUMENTED as error:
                counts[type(error).__name__] += 1
            except OSError as error:
                if name not in ("files", "checkpoint"):
                    failures.append(f"call {i} ({name}): {type(error).__name__}: {error}")
                counts[type(error).__name__] += 1
            except Hang:
                failures.append(f"call {i} ({name}): no answer within {call_timeout} s")
            except Exception as error:  # anything undocumented, or a broken property, is a finding
                failures.append(f"call {i} ({name}): {type(error).__name__}: {error}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            counts[f"[{name}]"] += 1
    return counts, failures


# 1. A failing rank ends the whole job

MPI_PHASES = {
    # phase: the ranks that reach it
    "arguments": (0, 1),
    "data": (0, 1),
    "model": (0, 1),
    "fit-arguments": (0, 1),
    "resume": (0,),
    "training": (0, 1),
    "validation": (0, 1),
    "checkpoint": (0,),
    "evaluation": (0,),
    "saving": (0,),
}
MPI_ERRORS = [
    "ValueError",
    "OSError",
    "MemoryError",
    "RuntimeError",
    "KeyboardInterrupt",
    "BadZipFile",
    "KeyError",
]


def fuzz_mpi(jobs, seed, timeout=30.0):
    """Launch `jobs` 2-rank CLI jobs, each with a random failure; return (counts, failures)."""
    rng = np.random.default_rng(seed)
    counts, failures = collections.Counter(), []
    launcher = shutil.which("mpirun")
    if launcher is None:
        return counts, ["mpirun: not found (apt-get install openmpi-bin)"]
    with tempfile.TemporaryDirectory(prefix="fastnaive-fuzz-mpi-") as workdir:
        work = Path(workdir)
        data = work / "mnist.npz"
        np.savez(data, **mnist_like(np.random.default_rng(0)))
        cli = [
            sys.executable,
            "-m",
            "fastnaive",
            "train",
            "--epochs",
            "1",
            "--hidden",
            "4",
            "--verbose",
            "0",
            "--data",
            str(data),
        ]
        subprocess.run(
            [*cli, "--checkpoint-dir", str(work / "resumable")],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for job in range(jobs):
            phase = rng.choice(list(MPI_PHASES))
            rank = int(rng.choice(MPI_PHASES[phase]))
            error = str(rng.choice(MPI_ERRORS))
            folder = work / f"run{job}"
            if phase == "resume":
                shutil.copytree(work / "resumable", folder)
            options = [
                "--checkpoint-dir",
                str(folder),
                "--validation-split",
                "0.5",
                "--save",
                str(work / f"model{job}.npz"),
                "--epochs",
                "2",
                "--threads",
                "1",
            ]
            options += ["--resume"] if phase == "resume" else []
            command = [
                sys.executable,
                str(FAULTY_CLI),
                phase,
                str(rank),
                error,
                "--",
                "train",
                "--distributed",
                *cli[4:],
                *options,
            ]
            start = time.perf_counter()
            try:
                result = subprocess.run(
                    [launcher, "--allow-run-as-root", "--oversubscribe", "-n", "2", *command],
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
                )
            except subprocess.TimeoutExpired:
                failures.append(f"mpi job {job} ({phase}, rank {rank}, {error}): hung")
                continue
            lines = [ln for ln in result.stderr.splitlines() if ln.startswith("fastnaive:")]
            what = f"mpi job {job} ({phase}, rank {rank}, {error})"
            if result.returncode == 0:
                failures.append(f"{what}: exit status 0")
            elif len(lines) != 1 or f"injected {phase} failure" not in lines[0]:
                failures.append(f"{what}: error lines {lines}")
            elif "Traceback" in result.stderr:
                failures.append(f"{what}: a traceback")
            counts[f"mpi {phase}"] += 1
            counts["mpi seconds"] += round(time.perf_counter() - start)
    return counts, failures


def fuzz_huge(seed):
    """One SGD update of a float32 weight of 2**31 + k elements on huge pages, its gradient
    nonzero at random positions on both sides of 2**31; return the failures."""
    import mmap

    rng = np.random.default_rng(seed)
    n = 2**31 + int(rng.integers(1, 4096))

    def zeros():
        memory = mmap.mmap(-1, 4 * n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        memory.madvise(mmap.MADV_HUGEPAGE)
        return np.frombuffer(memory, np.float32, count=n)

    weight, gradient = zeros(), zeros()
    positions = np.unique(np.concatenate([rng.integers(0, n, 8), [0, 2**31 - 1, 2**31, n - 1]]))
    gradient[positions] = rng.integers(1, 9, positions.size)
    fastnaive.update_weights([gradient], [weight], 0.5)
    if not np.array_equal(weight[positions], -0.5 * gradient[positions]):
        return [f"huge update of {n} elements: positions {positions} not updated"]
    return []


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--call-timeout", type=float, default=10.0)
    parser.add_argument("--mpi-jobs", type=int, default=0)
    parser.add_argument("--huge", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts, failures = fuzz(args.calls, args.seed, args.call_timeout)
    if args.mpi_jobs:
        mpi_counts, mpi_failures = fuzz_mpi(args.mpi_jobs, args.seed)
        counts.update(mpi_counts)
        failures += mpi_failures
    if args.huge:
        failures += fuzz_huge(args.seed)
        counts["huge update"] += 1
    seconds = time.perf_counter() - start
    print(
        f"{args.calls} generated calls (seed {args.seed}) in {seconds:.1f} s: "
        + ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
    )
    for failure in failures[:20]:
        print("FAILED", failure)
    print(f"{len(failures)} undocumented exceptions, broken properties or hangs")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
