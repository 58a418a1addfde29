"""What the benchmarks share: MNIST as the book prepares it, the book's model, one epoch of
each NumPy-side trainer, and the timing and table helpers.

The pytest benchmarks, compare.py, scaling.py and allocations.py import it from this
folder; the TensorFlow side is in book_tf.py.
"""

import ctypes
import functools
import os
import shutil
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import _cpus, _sparse, reference
from fastnaive.callbacks import Callback
from fastnaive.datasets import mnist

N_TRAIN = 60000
N_FEATURES = 28 * 28
N_CLASSES = 10
HIDDEN = 512
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
# NumPy and SciPy each bundle an OpenBLAS with its own thread pool, whose workers spin for a
# while after each call; on two cores two spinning pools slow each other down. A pause this
# long lets the previous phase's pool go idle before the next phase is timed.
SETTLE_SECONDS = 0.5
# Round trips per core_round_trip measurement: about 2 ms near, 8 ms far (Zen 5, a VM).
ROUND_TRIPS = 20000
# A round trip below this many nanoseconds counts as two CPUs near each other: Zen 5 virtual
# CPUs measured about 75 ns on one chiplet and 300-660 ns on two (BENCHMARKS.md).
NEAR_NS = 150
# Two threads summing 16 KB of their own each (L1-resident), PAIR_SWEEPS times, three
# rounds alone and together (about 6 ms): on two cores they reach 1.8-2.1x one thread's
# throughput; on the two hardware threads of one core 1.0-1.4x. A host may run both virtual
# CPUs on one core for spells of 4-400 ms, whatever their round trip (Zen 4, 2026-12-07: of
# 750 probes of 4 ms in 3 s, a third to a half below 1.6, in spells of 1-102 probes): an
# epoch with a probe below SHARED_SCALING before or after it counts as shared.
PAIR_BYTES = 16 * 1024
PAIR_SWEEPS = 300
SHARED_SCALING = 1.6


def mnist_train(n_samples=N_TRAIN):
    """Return MNIST's first n_samples training images, float32 (n, 784) in [0, 1], and labels."""
    (images, labels), _ = mnist.load_data()
    x = images[:n_samples].reshape(-1, N_FEATURES).astype(np.float32)
    x /= 255
    return x, labels[:n_samples]


def book_model(hidden=HIDDEN, seed=0):
    """The book's NaiveSequential: 784 -> hidden relu -> 10 softmax, float32."""
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(N_FEATURES, hidden, fastnaive.relu, seed=seed),
            fastnaive.NaiveDense(hidden, N_CLASSES, fastnaive.softmax, seed=seed + 1),
        ]
    )


BOOK_LAYERS = [N_FEATURES, HIDDEN, N_CLASSES]


def add_model_arguments(parser):
    """--layers and --optimizer: the MLP a benchmark trains (default the book's, with SGD)."""
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=BOOK_LAYERS,
        metavar="N",
        help="the MLP's layer sizes (default: the book's, 784 512 10): relu hidden layers, "
        "a softmax head, Glorot-uniform weights unless the book's",
    )
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="default sgd")


def check_model_arguments(parser, args):
    """Stop with parser.error unless --layers runs from MNIST's pixels to its classes."""
    if len(args.layers) < 2 or args.layers[0] != N_FEATURES or args.layers[-1] != N_CLASSES:
        parser.error(
            f"expected --layers {N_FEATURES} ... {N_CLASSES} (MNIST's pixels in, its classes out)"
        )


def mlp(layers):
    """The book's model for its layer sizes; else relu hidden layers and a softmax head,
    seeded Glorot-uniform weights (as matrix.py's)."""
    if list(layers) == BOOK_LAYERS:
        return book_model()
    last = len(layers) - 2
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(
                n_in,
                n_out,
                "softmax" if i == last else "relu",
                seed=i,
                initializer="glorot_uniform",
            )
            for i, (n_in, n_out) in enumerate(zip(layers, layers[1:]))
        ]
    )


def epoch_flop(n_samples, hidden=HIDDEN):
    """FLOP of one epoch's GEMMs: both layers' forward and weight gradient, and the second
    layer's input gradient (the first layer's is never needed)."""
    dense = N_FEATURES * hidden + hidden * N_CLASSES
    return 2 * n_samples * (2 * dense + hidden * N_CLASSES)


def fit_epoch(model, x, y, batch_size=BATCH_SIZE):
    """One epoch of fastnaive.fit, printing nothing."""
    fastnaive.fit(model, x, y, epochs=1, batch_size=batch_size, verbose=0)


def one_training_step_epoch(model, x, y, batch_size=BATCH_SIZE):
    """One epoch of the book's loop on fastnaive's public one_training_step."""
    for images_batch, labels_batch in fastnaive.BatchGenerator(x, y, batch_size):
        fastnaive.one_training_step(model, images_batch, labels_batch)


def reference_epoch(model, x, y, batch_size=BATCH_SIZE):
    """One epoch of fastnaive.reference.sgd_step, the straightforward NumPy step."""
    for images_batch, labels_batch in fastnaive.BatchGenerator(x, y, batch_size):
        reference.sgd_step(model, images_batch, labels_batch, LEARNING_RATE)


def best_seconds(function, repeats):
    """Return the shortest wall time of `repeats` calls of function()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


class StepClock(Callback):
    """A fit callback: `steps`, the seconds between one batch's end and the next's (from the
    second batch on)."""

    writes_weights = False  # it reads the clock only: fit need not measure the weights again

    def __init__(self):
        super().__init__()
        self.steps, self.last = [], None

    def on_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.last is not None:
            self.steps.append(now - self.last)
        self.last = now


def fastest_steps(epochs):
    """The sum over an epoch's batches of each one's fastest step over `epochs` (StepClock's
    steps of each): what a step costs when no neighbour interferes, the steadiest figure on
    a shared machine."""
    return sum(map(min, zip(*epochs)))


def settle():
    """Wait for the BLAS thread pools of the previous phase to go idle."""
    time.sleep(SETTLE_SECONDS)


def build_library(source, folder, libraries=(), flags=()):
    """The C file `source` compiled (with `flags` besides -O2) into a shared library in
    `folder` with the C compiler Python was built with; its path, or None without a compiler
    or where it fails."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return None
    path = os.path.join(folder, Path(source).stem + ".so")
    command = [compiler, "-O2", *flags, "-shared", "-fPIC", "-pthread", "-o", path, str(source)]
    if subprocess.run([*command, *libraries], capture_output=True).returncode != 0:
        return None
    return path


@functools.cache
def placement_library():
    """benchmarks/placement.c compiled (build_library) and loaded (ctypes), once per process;
    None without a compiler."""
    with tempfile.TemporaryDirectory(prefix="placement") as folder:
        path = build_library(Path(__file__).with_name("placement.c"), folder)
        if path is None:
            return None
        # Loaded (mapped) before its file goes with the folder.
        library = ctypes.CDLL(path)
    library.fastnaive_bench_round_trip.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
    library.fastnaive_bench_round_trip.restype = ctypes.c_double
    library.fastnaive_bench_pair_scaling.argtypes = [
        *(ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
    ]
    library.fastnaive_bench_pair_scaling.restype = ctypes.c_double
    library.fastnaive_bench_sweeps.argtypes = [
        *(ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long),
        *(ctypes.c_char, ctypes.c_char, ctypes.c_long),
    ]
    library.fastnaive_bench_sweeps.restype = ctypes.c_double
    library.fastnaive_bench_gemm_blocks.argtypes = [
        *(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int),
        *(ctypes.c_char, ctypes.c_int, ctypes.c_long),
    ]
    library.fastnaive_bench_gemm_blocks.restype = ctypes.c_double
    return library


def usable_cpus():
    """The CPUs this process can keep busy, as fastnaive counts them: its affinity, within its
    cgroup's CPU quota. fastnaive trains on no more threads than that, so a run that gives
    the peers more would not compare like with like."""
    return _cpus.usable_cpus()


def _on_two_cpus(function, *args):
    """placement.c's `function` (its name) on this process's first two CPUs with args; None
    with fewer than two CPUs, without a C compiler, or where it failed (a negative result)."""
    cpus = sorted(os.sched_getaffinity(0))
    library = placement_library()
    if len(cpus) < 2 or library is None:
        return None
    result = getattr(library, function)(cpus[0], cpus[1], *args)
    return result if result > 0 else None


def core_round_trip(trips=ROUND_TRIPS):
    """Mean nanoseconds for a cache line to go from this process's first CPU to its second
    and back (placement.c); None with fewer than two CPUs or without a C compiler.

    On a shared machine the figure changes as the host moves the virtual CPUs: steps that
    hand data between threads are as slow as it is high (BENCHMARKS.md).
    """
    return _on_two_cpus("fastnaive_bench_round_trip", trips)


def pair_scaling(bytes_=PAIR_BYTES, sweeps=PAIR_SWEEPS):
    """How many times one CPU's throughput this process's first two CPUs reach together, each
    summing a buffer of its own (placement.c); None with fewer than two CPUs or without a C
    compiler. About 2 on two cores; well under it where the host runs both on one."""
    return _on_two_cpus("fastnaive_bench_pair_scaling", bytes_, sweeps)


def blas_threads(n_threads):
    """Context manager limiting every BLAS pool (fastnaive's is SciPy's OpenBLAS) to n_threads."""
    return threadpool_limits(limits=n_threads, user_api="blas")


def each_instruction_set():
    """Select each instruction set of fastnaive's own kernels that the CPU runs, widest first
    (fastnaive._sparse.select_instruction_set), yielding its name; the widest again after."""
    widest = _sparse.select_instruction_set()
    sets = _sparse.INSTRUCTION_SETS
    try:
        for isa in sets[: sets.index(widest) + 1][::-1]:
            yield _sparse.select_instruction_set(isa)
    finally:
        _sparse.select_instruction_set()


def markdown_table(headers, rows):
    """Return rows (sequences of cells) as a Markdown table under headers."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def cpu_description():
    """The CPU's model name and its widest x86 vector extension ("AVX-512", "AVX2" or neither)."""
    model, flags = "unknown CPU", set()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} ({vectors})"
