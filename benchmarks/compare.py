"""The target table: one epoch of the book's workload on MNIST's 60000 training images
(784-512 relu-10 softmax, float32, SGD 1e-3, batch 128, batching included, both cores) for
fastnaive and its baselines, beside the GEMM floor, with each target marked PASS or MISS.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/compare.py [--quick] [--epochs-repeat N] [--eager-fraction F] [--json PATH]

Trainers: fastnaive.fit (also on one thread: every thread pool, OpenMP's that runs
fastnaive's kernels among them, limited to one); the book's loop on fastnaive's public
one_training_step; the NumPy reference (fastnaive.reference.sgd_step); the book's TensorFlow
loop with one_training_step eager and under tf.function; Keras model.fit with the same
layers. Each reports the best of --epochs-repeat epochs after a warm-up, except the eager
loop, timed once on --eager-fraction of the epoch and scaled to the whole. The GEMM floor is
the epoch's GEMM FLOP (98.2e9) at the faster of two float32 GEMM rates measured here at
2048^3: fastnaive._blas.gemm_checked (SciPy's OpenBLAS, the one fastnaive uses) and NumPy's
matmul (NumPy's own OpenBLAS), each the better of a measurement before the trainers and one
after them (a spell of the host's that runs both CPUs on one core may halve one).

NumPy and SciPy bundle separate OpenBLAS thread pools, which slow each other down when both
are awake on two cores: every trainer is timed in its own phase, never interleaved, after a
pause that lets the previous phase's pool go idle. Before each of fastnaive's phases the two
CPUs' round trip is measured and noted (on a virtual machine the host may move them apart,
which slows any two-thread epoch). `import fastnaive` is timed in fresh
subprocesses. --quick runs one epoch of 4096 samples per trainer to check that the command
works; nothing here fails on timing.
"""

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import workloads
from threadpoolctl import threadpool_info, threadpool_limits

from fastnaive import _blas

QUICK_SAMPLES = 4096
GEMM_SIZE = 2048
IMPORT_REPEATS = 5
OPENBLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS")
IMPORT_CODE = (
    "import time; start = time.perf_counter(); import fastnaive; print(time.perf_counter() - start)"
)

FIT = "fastnaive fit"
FIT_1_THREAD = "fastnaive fit, 1 thread"
STEP_LOOP = "fastnaive one_training_step loop"
REFERENCE = "NumPy reference (reference.sgd_step)"
TF_FUNCTION = "book's TF loop, tf.function step"
TF_EAGER = "book's TF loop, eager"
KERAS = "Keras model.fit"
FLOOR = "GEMM floor"
IMPORT = "import fastnaive"
ROWS = [FIT, FIT_1_THREAD, STEP_LOOP, REFERENCE, TF_FUNCTION, TF_EAGER, KERAS, FLOOR, IMPORT]

# (measure, numerator, denominator or None, comparison, bound)
TARGETS = [
    ("fastnaive epoch / GEMM floor", FIT, FLOOR, "<=", 1.15),
    ("NumPy reference / fastnaive", REFERENCE, FIT, ">=", 1.6),
    ("tf.function loop / fastnaive", TF_FUNCTION, FIT, ">=", 3.5),
    ("Keras fit / fastnaive", KERAS, FIT, ">=", 5),
    ("eager loop / fastnaive", TF_EAGER, FIT, ">=", 12),
    ("one_training_step loop / fit", STEP_LOOP, FIT, "<=", 1.3),
    ("import fastnaive, seconds", IMPORT, None, "<=", 0.2),
    ("fit on 1 thread / on 2", FIT_1_THREAD, FIT, ">=", 1.8),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one epoch of {QUICK_SAMPLES} samples per trainer, to check the command",
    )
    parser.add_argument(
        "--epochs-repeat",
        type=int,
        default=None,
        metavar="N",
        help="epochs per fast trainer, the best reported (default 3, 1 with --quick)",
    )
    parser.add_argument(
        "--eager-fraction",
        type=float,
        default=0.25,
        metavar="F",
        help="share of the epoch the eager TensorFlow loop is timed on (default 0.25)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if args.epochs_repeat is None:
        args.epochs_repeat = 1 if args.quick else 3
    if args.epochs_repeat < 1 or not 0 < args.eager_fraction <= 1:
        parser.error("expected --epochs-repeat >= 1 and 0 < --eager-fraction <= 1")
    return args


def package_version(*names):
    """The installed version of the first of the distributions `names` present."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine():
    """The CPU, cores, package versions, BLAS thread pools and OpenBLAS variables of this run."""
    return {
        "cpu": workloads.cpu_description(),
        "cores": os.cpu_count(),
        "usable_cores": workloads.usable_cpus(),
        "python": platform.python_version(),
        "versions": {
            name: package_version(*dists)
            for name, dists in [
                ("numpy", ["numpy"]),
                ("scipy", ["scipy"]),
                ("fastnaive", ["fastnaive"]),
                ("tensorflow", ["tensorflow-cpu", "tensorflow"]),
                ("keras", ["keras"]),
                ("threadpoolctl", ["threadpoolctl"]),
            ]
        },
        "thread_pools": threadpool_info(),
        "environment": {name: os.environ.get(name) for name in OPENBLAS_VARIABLES},
        "load_average_at_start": os.getloadavg(),
    }


def print_machine(info):
    print(
        f"CPU: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable); "
        f"Python {info['python']}"
    )
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(
        "Load average at start (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(
            *info["load_average_at_start"]
        )
    )
    print(
        "OpenBLAS variables: "
        + ", ".join(
            f"{k}={v}" if v is not None else f"{k} not set" for k, v in info["environment"].items()
        )
    )
    print()
    rows = [
        (
            pool["user_api"],
            pool["internal_api"],
            pool.get("version"),
            pool.get("architecture", ""),
            pool["num_threads"],
            pool["filepath"],
        )
        for pool in info["thread_pools"]
    ]
    print(
        workloads.markdown_table(
            ["API", "library", "version", "architecture", "threads", "file"], rows
        )
    )
    print()


def import_seconds(repeats):
    """The median time of `import fastnaive` in fresh interpreters."""
    times = [
        float(
            subprocess.run(
                [sys.executable, "-c", IMPORT_CODE], check=True, capture_output=True, text=True
            ).stdout
        )
        for _ in range(repeats)
    ]
    return statistics.median(times)


def gemm_rates(repeats):
    """Best float32 GEMM FLOP/s at GEMM_SIZE^3, through fastnaive's SciPy BLAS and through NumPy."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((GEMM_SIZE, GEMM_SIZE), dtype=np.float32) for _ in range(2))
    c = np.empty_like(a)
    flop = 2 * GEMM_SIZE**3
    calls = {
        "numpy.matmul (NumPy's OpenBLAS)": lambda: np.matmul(a, b, out=c),
        "fastnaive._blas.gemm_checked (SciPy's OpenBLAS)": lambda: _blas.gemm_checked(a, b, c),
    }
    rates = {}
    for name, call in calls.items():
        call()
        rates[name] = flop / workloads.best_seconds(call, repeats)
        workloads.settle()
    return rates


def warm_up_size(n_samples):
    """Samples for a warm-up epoch: two full batches and the epoch's short last batch, if any."""
    return 2 * workloads.BATCH_SIZE + n_samples % workloads.BATCH_SIZE


def time_fastnaive(x, y, repeats):
    """Seconds per epoch of fit (on every core and on one thread) and of the one_training_step
    loop; and the two CPUs' round trip before each of the three (workloads.core_round_trip,
    ns or None): a two-thread epoch run with the CPUs far apart is slower, whatever the build."""
    warm = warm_up_size(len(x))
    model = workloads.book_model()
    seconds, trips = {}, {}
    for name, epoch in [(FIT, workloads.fit_epoch), (STEP_LOOP, workloads.one_training_step_epoch)]:
        epoch(model, x[:warm], y[:warm])
        trips[name] = workloads.core_round_trip()
        seconds[name] = workloads.best_seconds(lambda epoch=epoch: epoch(model, x, y), repeats)
    with threadpool_limits(limits=1):
        trips[FIT_1_THREAD] = workloads.core_round_trip()
        seconds[FIT_1_THREAD] = workloads.best_seconds(
            lambda: workloads.fit_epoch(model, x, y), repeats
        )
    return seconds, trips


def time_reference(x, y, repeats):
    """Seconds per epoch of the NumPy reference."""
    warm = warm_up_size(len(x))
    model = workloads.book_model()
    workloads.reference_epoch(model, x[:warm], y[:warm])
    return {
        REFERENCE: workloads.best_seconds(lambda: workloads.reference_epoch(model, x, y), repeats)
    }


def time_tensorflow(x, y, repeats, eager_fraction):
    """Seconds per epoch of the book's TF loop (tf.function and eager) and of Keras fit."""
    import book_tf

    warm = warm_up_size(len(x))
    step = book_tf.compiled_step(book_tf.book_model())
    book_tf.loop_epoch(step, x[:warm], y[:warm])
    seconds = {TF_FUNCTION: workloads.best_seconds(lambda: book_tf.loop_epoch(step, x, y), repeats)}
    workloads.settle()
    seconds[TF_EAGER], eager_batches = time_eager(book_tf, x, y, eager_fraction)
    workloads.settle()
    keras_model = book_tf.keras_model()
    fit = functools.partial(keras_model.fit, batch_size=workloads.BATCH_SIZE, epochs=1, verbose=0)
    fit(x[:warm], y[:warm])
    seconds[KERAS] = workloads.best_seconds(lambda: fit(x, y), repeats)
    return seconds, eager_batches


def time_eager(book_tf, x, y, fraction):
    """Seconds per epoch of the eager loop, timed on its first `fraction` of batches and
    scaled; and (batches timed, batches per epoch)."""
    warm = warm_up_size(len(x))
    step = functools.partial(book_tf.one_training_step, book_tf.book_model())
    book_tf.loop_epoch(step, x[:warm], y[:warm])
    n_batches = -(-len(x) // workloads.BATCH_SIZE)
    timed = max(1, round(fraction * n_batches))
    start = time.perf_counter()
    book_tf.loop_epoch(step, x, y, timed)
    return (time.perf_counter() - start) * n_batches / timed, (timed, n_batches)


def evaluate_targets(seconds):
    """[(measure, value, comparison, bound, met)] for TARGETS."""
    results = []
    for name, numerator, denominator, comparison, bound in TARGETS:
        value = seconds[numerator] / (seconds[denominator] if denominator else 1)
        met = value <= bound if comparison == "<=" else value >= bound
        results.append((name, value, comparison, bound, met))
    return results


def print_report(n_samples, seconds, rates, eager_batches, targets, trips):
    floor_source = max(rates, key=rates.get)
    print(
        f"## One epoch on {n_samples} MNIST images (best of the repeats; noisy on a busy machine)"
    )
    print()
    notes = {
        TF_EAGER: "timed on {} of {} batches, scaled".format(*eager_batches),
        FLOOR: f"{workloads.epoch_flop(n_samples) / 1e9:.1f} GFLOP at {floor_source}'s rate",
        IMPORT: f"median of {IMPORT_REPEATS} fresh interpreters",
    }
    for name, trip in trips.items():
        if trip is not None:
            placement = "near" if trip < workloads.NEAR_NS else "far"
            notes[name] = f"CPUs {placement}: round trip {trip:.0f} ns before it"
    print(
        workloads.markdown_table(
            ["", "seconds", "note"],
            [(name, f"{seconds[name]:.3f}", notes.get(name, "")) for name in ROWS],
        )
    )
    print()
    print(
        f"float32 GEMM {GEMM_SIZE}^3: "
        + "; ".join(f"{name} {rate / 1e9:.1f} GFLOP/s" for name, rate in rates.items())
        + f". The floor uses the faster, {floor_source}."
    )
    print()
    print("Load average at end (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print()
    print("## Targets")
    print()
    print(
        workloads.markdown_table(
            ["measure", "value", "target", "result"],
            [
                (name, f"{value:.2f}", f"{comparison} {bound}", "PASS" if met else "MISS")
                for name, value, comparison, bound, met in targets
            ],
        )
    )


def write_json(path, info, n_samples, seconds, rates, eager_batches, targets, trips):
    results = {
        "machine": info,
        "n_samples": n_samples,
        "seconds": seconds,
        "round_trip_ns": trips,
        "gemm_flop_per_second": rates,
        "eager_batches_timed": list(eager_batches),
        "targets": [
            {"measure": name, "value": value, "comparison": comparison, "bound": bound, "met": met}
            for name, value, comparison, bound, met in targets
        ],
    }
    with open(path, "w") as file:
        json.dump(results, file, indent=2)


def main(argv=None):
    args = parse_args(argv)
    info = machine()
    print_machine(info)
    seconds = {IMPORT: import_seconds(IMPORT_REPEATS)}
    rates = gemm_rates(args.epochs_repeat)
    x, y = workloads.mnist_train(QUICK_SAMPLES if args.quick else workloads.N_TRAIN)
    workloads.settle()
    fastnaive_seconds, trips = time_fastnaive(x, y, args.epochs_repeat)
    seconds.update(fastnaive_seconds)
    workloads.settle()
    seconds.update(time_reference(x, y, args.epochs_repeat))
    workloads.settle()
    tf_seconds, eager_batches = time_tensorflow(x, y, args.epochs_repeat, args.eager_fraction)
    seconds.update(tf_seconds)
    workloads.settle()
    later = gemm_rates(args.epochs_repeat)
    rates = {name: max(rate, later[name]) for name, rate in rates.items()}
    seconds[FLOOR] = workloads.epoch_flop(len(x)) / max(rates.values())
    targets = evaluate_targets(seconds)
    print_report(len(x), seconds, rates, eager_batches, targets, trips)
    if args.json:
        write_json(args.json, info, len(x), seconds, rates, eager_batches, targets, trips)


if __name__ == "__main__":
    main()
