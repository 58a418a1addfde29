"""fastnaive.sklearn against scikit-learn's MLP: seconds per epoch side by side in one run, as a
Markdown table, with the CPU.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz and
Fashion-MNIST where fastnaive.datasets finds it (Debian: dataset-fashion-mnist):

    python benchmarks/sklearn_mlp.py [--quick] [--epochs N] [--repeats N]

Workloads, each estimator with scikit-learn's defaults (adam, learning rate 1e-3, alpha 1e-4,
batches of 200, shuffled) but for the hidden layers and max_iter:
- MNIST: 60000 training images, float32 in [0, 1], one hidden layer of 512 relu units;
- Fashion-MNIST: the same on its 60000 training images;
- tabular: scikit-learn's bundled digits (8x8 pixels / 16) repeated 30 times, 53,910 rows of
  64 float64 features with scikit-learn's default hidden layer of 100 relu units; here
  fastnaive gets dtype="float64", so that both train in float64 (with float32 inputs both
  train in float32, as on the images).
Both estimators get the same random_state, hence the same initial weights, shuffles and
batches: the table's last column is the largest relative gap between their loss curves, to
show that they ran the same training. In float64 they agree to 1e-15; in float32 two runs of
Adam drift apart over hundreds of steps (scikit-learn's own loss curves differ by 1e-4
between 1 and 2 BLAS threads after one Fashion-MNIST epoch), hence gaps of 1e-4 to 3e-3.
Each workload runs on all cores (each library's default threads) and on one thread (BLAS
and OpenMP limited to 1 by threadpoolctl around both fits). A time is the whole of `fit`
(input checks, weights drawn, --epochs epochs) divided by the epochs; repeats alternate
between the two estimators and between which goes first, each after a pause
(workloads.settle); the table gives the median and the best. On a shared machine, read the
ratios, not the seconds. --quick runs 2000 samples of each workload for one epoch, once, to
check that the script works.
"""

import argparse
import contextlib
import os
import statistics
import time
import warnings

import numpy as np
import workloads
from sklearn import neural_network
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

import fastnaive.sklearn
from fastnaive.datasets import fashion_mnist, mnist

QUICK_SAMPLES = 2000
TABULAR_REPEATS = 30
TRAINERS = {
    "scikit-learn": neural_network.MLPClassifier,
    "fastnaive": fastnaive.sklearn.MLPClassifier,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SAMPLES} samples, one epoch, once"
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="fits per trainer (default 3)")
    return parser.parse_args(argv)


def images(load):
    (x, y), _ = load()
    return x.reshape(len(x), -1).astype(np.float32) / 255, y


def tabular():
    x, y = load_digits(return_X_y=True)
    return np.tile(x / 16, (TABULAR_REPEATS, 1)), np.tile(y, TABULAR_REPEATS)


def workload_list(quick):
    """[(name, x, y, parameters)]"""
    cases = [
        ("MNIST", images(mnist.load_data), (512,)),
        ("Fashion-MNIST", images(fashion_mnist.load_data), (512,)),
        ("tabular (digits x 30)", tabular(), (100,)),
    ]
    out = []
    for name, (x, y), hidden in cases:
        if quick:
            x, y = x[:QUICK_SAMPLES], y[:QUICK_SAMPLES]
        out.append((name, x, y, {"hidden_layer_sizes": hidden}))
    return out


def fit_seconds(trainer, x, y, params, epochs):
    """(seconds per epoch of one fit, its loss curve)."""
    extra = {"dtype": x.dtype.name} if trainer == "fastnaive" else {}
    estimator = TRAINERS[trainer](
        **params, max_iter=epochs, n_iter_no_change=epochs + 1, random_state=0, **extra
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        estimator.fit(x, y)
        seconds = time.perf_counter() - start
    return seconds / epochs, np.asarray(estimator.loss_curve_)


def measure(x, y, params, epochs, repeats, threads):
    """{trainer: [seconds per epoch, ...]} and the largest relative gap of the loss curves."""
    times = {trainer: [] for trainer in TRAINERS}
    curves = {}
    for repeat in range(repeats):
        order = list(TRAINERS) if repeat % 2 == 0 else list(TRAINERS)[::-1]
        for trainer in order:
            workloads.settle()
            limit = threadpool_limits(limits=threads) if threads else contextlib.nullcontext()
            with limit:
                seconds, curves[trainer] = fit_seconds(trainer, x, y, params, epochs)
            times[trainer].append(seconds)
    reference = curves["scikit-learn"]
    gap = float(np.max(np.abs(curves["fastnaive"] - reference) / np.abs(reference)))
    return times, gap


def main(argv=None):
    args = parse_args(argv)
    epochs, repeats = (1, 1) if args.quick else (args.epochs, args.repeats)
    print(f"CPU: {workloads.cpu_description()}, {os.cpu_count()} cores")
    print("Load average at start (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{epochs} epochs per fit, {repeats} fits per trainer, interleaved\n")
    rows = []
    for name, x, y, params in workload_list(args.quick):
        for threads in (None, 1):
            times, gap = measure(x, y, params, epochs, repeats, threads)
            ours, theirs = times["fastnaive"], times["scikit-learn"]
            hidden = "-".join(str(n) for n in params["hidden_layer_sizes"])
            rows.append(
                [
                    name,
                    f"{x.shape[0]} x {x.shape[1]}",
                    f"{x.shape[1]}-{hidden} relu-{len(np.unique(y))}",
                    x.dtype.name,
                    "all cores" if threads is None else f"{threads}",
                    f"{statistics.median(theirs):.3f} ({min(theirs):.3f})",
                    f"{statistics.median(ours):.3f} ({min(ours):.3f})",
                    f"{statistics.median(theirs) / statistics.median(ours):.1f}x",
                    f"{gap:.1e}",
                ]
            )
            print(f"{name}, threads {threads}: scikit-learn {theirs}, fastnaive {ours}", flush=True)
    print()
    print(
        workloads.markdown_table(
            [
                "workload",
                "samples x features",
                "model",
                "dtype",
                "threads",
                "scikit-learn s/epoch, median (best)",
                "fastnaive.sklearn s/epoch, median (best)",
                "speedup (medians)",
                "loss curves' largest relative gap",
            ],
            rows,
        )
    )
    print("Load average at end (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
