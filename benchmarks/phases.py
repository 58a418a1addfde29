"""Where a training step's time goes, as a Markdown table: fit's epochs on the book's model
(or --layers, --optimizer), each phase of its steps timed (the public methods of
fastnaive.engine.Step that Step.train runs: forward, the loss and its gradient, backward,
the overflow bound, commit with the fused update; gather where fit shuffles), at 1 and 2
threads, the thread counts alternating epoch by epoch in one process. fit runs the phases
before commit in one compiled call (Program.train); here they run one call each
(Step.compiled_passes off), so that each can be timed: "train" is then a few microseconds
longer than in fit.

Run from the repository root, with FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/phases.py [--quick] [--epochs N] [--dataset mnist|fashion] [--shuffle]
        [--layers 784 256 128 10] [--optimizer adam]

Per phase: the median and the mean over the steps of the timed epochs, in microseconds (a
phase's mean above its median is its slow tail), and 1-thread / 2-thread, the phase's own
thread scaling; "outside train" is the rest of fit's loop. Each call's timer costs about
0.2 us. Nothing here fails on timing.
"""

import argparse
import collections
import os
import time

import matrix
import numpy as np
import workloads
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import engine

PHASES = (
    "gather",
    "forward",
    "loss_and_hits",
    "backward",
    "fused_bound",
    "gradient_bound",
    "commit",
    "train",
)
THREADS = (1, 2)
QUICK_SAMPLES = 2048


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2048 samples, one epoch each")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs per thread count")
    parser.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist")
    parser.add_argument("--shuffle", action="store_true", help="fit shuffles (gathers batches)")
    workloads.add_model_arguments(parser)
    args = parser.parse_args(argv)
    workloads.check_model_arguments(parser, args)
    return args


def clock_phases(times):
    """Wrap each phase method of engine.Step to append its seconds to times[name]."""
    originals = {}
    for name in PHASES:
        method = getattr(engine.Step, name)
        originals[name] = method

        def timed(self, *args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            result = _method(self, *args, **kwargs)
            times[_name].append(time.perf_counter() - start)
            return result

        setattr(engine.Step, name, timed)
    return originals


def main(argv=None):
    args = parse_args(argv)
    n_samples = QUICK_SAMPLES if args.quick else workloads.N_TRAIN
    epochs = 1 if args.quick else args.epochs
    x, y = matrix.load_images(args.dataset)
    x, y = x[:n_samples], y[:n_samples]
    threads = [t for t in THREADS if t <= len(os.sched_getaffinity(0))]
    models = {t: workloads.mlp(args.layers) for t in threads}
    times = {t: collections.defaultdict(list) for t in threads}
    epoch_seconds = {t: [] for t in threads}
    train_seconds = {t: [] for t in threads}  # per epoch, the sum of its train calls
    trips = []
    current = collections.defaultdict(list)
    originals = clock_phases(current)
    engine.Step.compiled_passes = False
    try:
        for epoch in range(epochs + 1):  # the first epoch of each warms up, untimed
            for n_threads in threads:
                current.clear()
                with threadpool_limits(n_threads):
                    if n_threads > 1:
                        trips.append(workloads.core_round_trip())
                    start = time.perf_counter()
                    fastnaive.fit(
                        models[n_threads],
                        x,
                        y,
                        epochs=1,
                        batch_size=workloads.BATCH_SIZE,
                        optimizer=args.optimizer,
                        shuffle=args.shuffle,
                        seed=epoch,
                        verbose=0,
                    )
                    seconds = time.perf_counter() - start
                if epoch:
                    epoch_seconds[n_threads].append(seconds)
                    train_seconds[n_threads].append(sum(current["train"]))
                    for name, values in current.items():
                        times[n_threads][name].extend(values)
    finally:
        engine.Step.compiled_passes = True
        for name, method in originals.items():
            setattr(engine.Step, name, method)

    steps = -(-n_samples // workloads.BATCH_SIZE)
    print(
        f"# A step's phases: {'-'.join(map(str, args.layers))}, {args.optimizer}, on "
        f"{args.dataset}, batch 128, fit "
        f"{'shuffled' if args.shuffle else 'in order'}\n"
    )
    print(
        f"CPU: {workloads.cpu_description()}; {epochs} timed epoch(s) per thread count, "
        f"{steps} steps each, after one untimed"
    )
    known = [t for t in trips if t is not None]
    if known:
        print(f"Core round trip before the 2-thread epochs: {min(known):.0f}-{max(known):.0f} ns")
    print()
    rows = []
    names = [p for p in PHASES if any(times[t][p] for t in threads)]
    for name in [*names, "outside train", "epoch"]:
        row = [name]
        medians = []
        for t in threads:
            if name == "epoch":
                values = np.array(epoch_seconds[t]) / steps
            elif name == "outside train":
                values = (np.array(epoch_seconds[t]) - np.array(train_seconds[t])) / steps
            else:
                values = np.array(times[t][name])
            medians.append(np.median(values))
            row += [f"{np.median(values) * 1e6:.1f}", f"{np.mean(values) * 1e6:.1f}"]
        if len(threads) > 1:
            row.append(f"{medians[0] / medians[-1]:.2f}")
        rows.append(row)
    headers = ["phase, us per step"]
    for t in threads:
        headers += [f"{t} thread(s): median", "mean"]
    if len(threads) > 1:
        headers.append(f"1 / {threads[-1]} threads")
    print(workloads.markdown_table(headers, rows))


if __name__ == "__main__":
    main()
