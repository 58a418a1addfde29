"""What two threads gain when each owns half of the hidden units, wherever the host places the
CPUs: the book's step split by W1's columns (benchmarks/split_step.c) against fastnaive.fit.

fastnaive's two-thread step splits the first layer by features: each thread groups and
multiplies its half of X's columns, and the other thread's partial sums of Z, and half of
delta1, cross between the cores every step (about 400 KB). split_step.c models the other
split: each thread groups the whole batch itself and owns half of the hidden units (its
columns of W1, b1, Z and delta1, its rows of W2), so that only the two partial logits (5 KB)
cross. Its layouts: every half in buffers of its own ("own buffers"); W1 one row-major array,
as the model holds it, the threads' halves side by side in each of its rows ("W1 one
array"); and W1, Z and delta1 each one such array.

Each round times, for fit and each layout in turn, one epoch of 469 steps on one thread and
one on two, the two CPUs' round trip and pair scaling measured before and after the
two-thread epoch (threads.placed): the epoch counts as near, shared, far or moved as
threads.py counts it. The model runs batches of MNIST drawn at random (64 of them, in turn),
SGD 1e-3, from the same U[0, 0.1) weights each time; its weights after an epoch must be the
same bits on one thread and on two, and in every layout (else the command exits with 1).

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/split_step.py [--rounds N] [--isa avx2] [--quick]

--isa avx2 holds fastnaive's kernels, and the model's grouping and products, to AVX2 (the
book's step calls no BLAS; the model's own loops over the head stay as compiled). --quick
runs one round of 20 steps, to check the command. Nothing here fails on timing.
"""

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import threads
import workloads
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import _sparse

SOURCE = Path(__file__).with_name("split_step.c")
INCLUDE = Path(__file__).resolve().parent.parent / "src" / "fastnaive"
BATCHES = 64
STEPS = -(-workloads.N_TRAIN // workloads.BATCH_SIZE)  # an epoch's 469
QUICK_STEPS = 20
LAYOUTS = {
    "split by hidden units, own buffers": 0,
    "split by hidden units, W1 one array": 1,
    "split by hidden units, W1, Z, delta1 one array each": 3,
}
FIT = "fastnaive.fit (split by features)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="default 8")
    parser.add_argument("--isa", choices=["native", "avx2"], default="native")
    parser.add_argument("--quick", action="store_true", help=f"one round of {QUICK_STEPS} steps")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"Expected --rounds >= 1. Received: {args.rounds}")
    if args.quick:
        args.rounds = 1
    return args


def split_library(folder):
    """split_step.c compiled against fastnaive's kernels and loaded, or None where it cannot
    be compiled."""
    flags = ["-O3", "-march=native", "-fopenmp", f"-I{INCLUDE}"]
    path = workloads.build_library(SOURCE, folder, ["-lm"], flags)
    if path is None:
        return None
    library = ctypes.CDLL(path)
    function = library.fastnaive_bench_split_epoch
    function.argtypes = [
        *(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int),
        *(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_double)),
        ctypes.POINTER(ctypes.c_uint),
    ]
    function.restype = ctypes.c_double
    return function


def batches():
    """BATCHES batches of MNIST rows drawn at random (seeded), (BATCHES * 128, 784) float32,
    and their labels as C ints."""
    x, y = workloads.mnist_train()
    rows = np.random.default_rng(0).permutation(len(x))[: BATCHES * workloads.BATCH_SIZE]
    return np.ascontiguousarray(x[rows]), np.ascontiguousarray(y[rows], dtype=np.intc)


def model_epoch(epoch, images, labels, steps, n_threads, layout, widest):
    """(seconds, mean loss, bits of the weights after) of split_step.c's epoch."""
    loss, bits = ctypes.c_double(), ctypes.c_uint()
    seconds = epoch(
        images.ctypes.data,
        labels.ctypes.data,
        BATCHES,
        steps,
        n_threads,
        layout,
        widest,
        ctypes.byref(loss),
        ctypes.byref(bits),
    )
    if seconds < 0:
        raise MemoryError("split_step.c could not allocate its buffers")
    return seconds, loss.value, bits.value


class FitEpoch:
    """fastnaive.fit for `steps` batches of the book's model, from the same weights each time."""

    def __init__(self, steps):
        x, y = workloads.mnist_train(steps * workloads.BATCH_SIZE)
        self.x, self.y = x, y
        self.model = workloads.book_model()
        self.initial = self.model.get_weights()

    def __call__(self, n_threads):
        self.model.set_weights(self.initial)
        with threadpool_limits(n_threads):
            start = time.perf_counter()
            fastnaive.fit(
                self.model,
                self.x,
                self.y,
                epochs=1,
                batch_size=workloads.BATCH_SIZE,
                optimizer=fastnaive.SGD(workloads.LEARNING_RATE),
                verbose=0,
            )
            return time.perf_counter() - start


def row(name, ones, twos):
    """A table row: one thread's epochs, the two-thread epochs by placement, their ratios."""
    by_kind = threads.by_placement(twos)

    def ratio(kind):
        seconds = by_kind[kind]
        return f"{statistics.median(ones) / statistics.median(seconds):.2f}" if seconds else "-"

    def cell(kind):
        seconds = by_kind[kind]
        return f"{statistics.median(seconds):.3f} ({len(seconds)})" if seconds else "-"

    return [
        name,
        f"{statistics.median(ones):.3f}",
        cell("near"),
        ratio("near"),
        cell("shared"),
        ratio("shared"),
        cell("far"),
        ratio("far"),
        cell("moved"),
    ]


def main(argv=None):
    args = parse_args(argv)
    steps = QUICK_STEPS if args.quick else STEPS
    chosen = _sparse.select_instruction_set("avx2" if args.isa == "avx2" else "avx512")
    widest = _sparse.INSTRUCTION_SETS.index(chosen)
    with tempfile.TemporaryDirectory(prefix="split_step") as folder:
        epoch = split_library(folder)
        if epoch is None:
            print("split_step.py: could not compile split_step.c (C, OpenMP)", file=sys.stderr)
            return 1
        images, labels = batches()
        fit = FitEpoch(steps)
        fit(2)  # warm-up: the pool started, the kernels' first-call choices made
        times = {name: ([], []) for name in (FIT, *LAYOUTS)}
        bits, trips, scalings = set(), [], []
        for _ in range(args.rounds):
            for name in times:
                ones, twos = times[name]
                if name == FIT:
                    ones.append(fit(1))
                    seconds, where = threads.placed(fit, 2)
                else:
                    layout = LAYOUTS[name]
                    run = (epoch, images, labels, steps)
                    seconds, loss, one_bits = model_epoch(*run, 1, layout, widest)
                    ones.append(seconds)
                    result, where = threads.placed(model_epoch, *run, 2, layout, widest)
                    seconds, two_loss, two_bits = result
                    if not np.isfinite(loss) or loss != two_loss:
                        print(f"split_step.py: losses {loss!r} and {two_loss!r}", file=sys.stderr)
                        return 1
                    bits |= {one_bits, two_bits}
                twos.append((seconds, where))
                trips += where.trips or []
                scalings += where.scalings or []
    if len(bits) != 1:
        print(f"split_step.py: weights of {len(bits)} different bits", file=sys.stderr)
        return 1
    print(f"# Two threads by how they split the book's step ({steps} steps an epoch)\n")
    print(f"CPU: {workloads.cpu_description()}; kernels: {_sparse.instruction_set()}")
    print(
        f"Rounds: {args.rounds}; core round trips {threads.spread(trips, 0)} ns, near below "
        f"{workloads.NEAR_NS:g} ns; pair scalings {threads.spread(scalings, 2)}, shared below "
        f"{workloads.SHARED_SCALING:g}"
    )
    print("The model's weights: the same bits at 1 and 2 threads, in every layout\n")
    headers = [
        "step",
        "1 thread s, median",
        "2 threads near s (epochs)",
        "1t / 2t near",
        "2 threads shared s (epochs)",
        "1t / 2t shared",
        "2 threads far s (epochs)",
        "1t / 2t far",
        "2 threads moved s (epochs)",
    ]
    print(workloads.markdown_table(headers, [row(name, *times[name]) for name in times]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
