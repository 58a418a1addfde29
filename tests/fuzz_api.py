"""Fuzz fastnaive's public API with generated calls: random shapes, dtypes, layouts and values,
valid and invalid. Each call must return or raise one of the documented exceptions
(ValueError, TypeError, FloatingPointError); a crash kills the process, and a call
that takes longer than --call-timeout seconds is reported as a hang.

    python tests/fuzz_api.py --calls 100000 --seed 0

prints the number of calls, how many raised each exception, and exits 1 on any
undocumented exception or hang. tests/test_fuzz.py runs a short version.
"""

import argparse
import collections
import contextlib
import io
import signal
import sys
import time

import numpy as np

import fastnaive

DOCUMENTED = (ValueError, TypeError, FloatingPointError)
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


class Hang(Exception):
    """A call ran past its time limit."""


class Fuzzer:
    """Draws one random call at a time."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

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

    def call(self):
        """Return (name, thunk) for one random public call."""
        kind = self.choice(
            ["dense", "sequential", "forward", "train", "update", "batches", "set_weights"]
        )
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


def on_alarm(signum, frame):
    raise Hang()


def fuzz(calls, seed, call_timeout=10.0):
    """Run `calls` generated calls; return (counts by outcome, list of failures)."""
    fuzzer = Fuzzer(seed)
    counts = collections.Counter()
    failures = []
    signal.signal(signal.SIGALRM, on_alarm)
    for i in range(calls):
        try:
            name, thunk = fuzzer.call()
        except DOCUMENTED:
            counts["setup raised"] += 1
            continue
        signal.setitimer(signal.ITIMER_REAL, call_timeout)
        try:
            with np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
                thunk()
            counts["returned"] += 1
        except DOCUMENTED as error:
            counts[type(error).__name__] += 1
        except Hang:
            failures.append(f"call {i} ({name}): no answer within {call_timeout} s")
        except Exception as error:  # anything undocumented is a finding
            failures.append(f"call {i} ({name}): {type(error).__name__}: {error}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return counts, failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--call-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts, failures = fuzz(args.calls, args.seed, args.call_timeout)
    seconds = time.perf_counter() - start
    print(
        f"{args.calls} generated calls (seed {args.seed}) in {seconds:.1f} s: "
        + ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))
    )
    for failure in failures[:20]:
        print("FAILED", failure)
    print(f"{len(failures)} undocumented exceptions or hangs")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
