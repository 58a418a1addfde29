"""Two builds of fastnaive side by side: seconds per epoch of the book's workload, interleaved.

Each build is a source tree whose extensions were built in place (`python setup.py
build_ext --inplace`), or "installed" for the fastnaive that Python imports. Every round
runs one fresh process per build, alternating, each timing one epoch of fastnaive.fit and
one of the book's loop (BatchGenerator and one_training_step) after a warm-up epoch; the
table gives the median and best over the rounds. "Fastest steps" is, for fit, the sum over
the epoch's batches of each batch's fastest step over every round and timed epoch (the
time between one batch's end and the next's, from a callback): what a step costs when no
neighbour interferes, the steadiest figure on a shared machine; `--epochs N` times N epochs
a round. Before each timed fit epoch a cache line's round trip between the process's first
two CPUs is measured (workloads.core_round_trip): the last columns split fit's epochs into
those whose round trip was below --near-ns (CPUs near each other) and the rest (far apart:
on a virtual machine the host moves its virtual CPUs, and a two-thread step that hands data
between its threads slows down with the distance). For example, against the previous
release:

    git worktree add /tmp/before v0.1.0 && (cd /tmp/before && python setup.py build_ext --inplace)
    python benchmarks/versions.py /tmp/before installed [--rounds 5] [--threads N]

--epoch-callback gives fit a user callback with an epoch hook only (as a logger or a
checkpoint has), besides the step clock. --layers and --optimizer time fit on another MLP
instead (relu hidden layers, a softmax head, seeded Glorot-uniform weights as matrix.py's,
learning rate 1e-3, batch 128), e.g. the matrix's deep model with Adam:

    python benchmarks/versions.py /tmp/before installed --layers 784 256 128 10 --optimizer adam

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import workloads

WORKER = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
import fastnaive, workloads
x, y = workloads.mnist_train()
layers, optimizer = {layers!r}, {optimizer!r}


class EpochNotes(fastnaive.callbacks.Callback):
    # a user's callback with an epoch hook only, as a logger or a checkpoint has
    def on_epoch_end(self, epoch, logs=None):
        self.logs = logs


user_callbacks = [EpochNotes()] if {epoch_callback!r} else []


def model():
    return workloads.mlp(layers)


def fit_epoch(model, x, y, clock=None):
    fastnaive.fit(
        model, x, y, 1, workloads.BATCH_SIZE, optimizer=optimizer, verbose=0,
        callbacks=user_callbacks + ([] if clock is None else [clock]),
    )


epochs = [("fit", fit_epoch)]
if layers == {book!r} and optimizer == "sgd":
    epochs.append(("book loop", workloads.one_training_step_epoch))
timings, steps, trips = {{}}, [], []
for name, epoch in epochs:
    trained = model()
    epoch(trained, x, y)
    seconds = []
    for _ in range({epochs}):
        clock = workloads.StepClock() if name == "fit" else None
        if clock:
            trips.append(workloads.core_round_trip())
        start = time.perf_counter()
        epoch(trained, x, y, clock) if clock else epoch(trained, x, y)
        seconds.append(time.perf_counter() - start)
        if clock:
            steps.append(clock.steps)
    timings[name] = seconds
print(json.dumps({{"file": fastnaive.__file__, "steps": steps, "trips": trips, **timings}}))
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs=2, help='source trees, or "installed"')
    parser.add_argument("--rounds", type=int, default=5, help="default 5")
    parser.add_argument("--threads", type=int, default=None, help="BLAS and OpenMP threads")
    workloads.add_model_arguments(parser)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs a round, default 1")
    parser.add_argument(
        "--near-ns",
        type=float,
        default=workloads.NEAR_NS,
        help=f"round trips below this are CPUs near each other (default {workloads.NEAR_NS:g})",
    )
    parser.add_argument(
        "--epoch-callback",
        action="store_true",
        help="fit also runs a user callback with only an epoch hook (a logger's, a checkpoint's)",
    )
    args = parser.parse_args(argv)
    workloads.check_model_arguments(parser, args)
    return args


def run(build, args):
    """One fresh process of `build` with the settings `args` (parse_args'): its epochs'
    seconds and fit's step seconds, as the worker's JSON."""
    env = dict(os.environ)
    if build != "installed":
        env["PYTHONPATH"] = str(Path(build).resolve() / "src")
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    benchmarks = str(Path(__file__).resolve().parent)
    code = WORKER.format(benchmarks=benchmarks, book=workloads.BOOK_LAYERS, **vars(args))
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd="/"
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    results = {build: [] for build in args.builds}
    for _ in range(args.rounds):
        for build in args.builds:
            results[build].append(run(build, args))
    threads = args.threads or "default"
    model = "-".join(map(str, args.layers))
    print(
        f"{workloads.cpu_description()}; threads: {threads}; {model}, {args.optimizer}; "
        f"{args.rounds} rounds of {args.epochs} timed epoch(s), interleaved"
        f"{'; fit with an epoch-only user callback' if args.epoch_callback else ''}\n"
    )
    trips = [t for runs in results.values() for r in runs for t in r["trips"] if t]
    rows = []
    for build, runs in results.items():
        for name in [name for name in ("fit", "book loop") if name in runs[0]]:
            seconds = [s for r in runs for s in r[name]]
            steps = [epoch for r in runs for epoch in r["steps"]] if name == "fit" else []
            fastest = f"{workloads.fastest_steps(steps):.3f}" if steps else ""
            placed = ["", ""]
            if name == "fit" and trips:
                fit = [(s, t) for r in runs for s, t in zip(r["fit"], r["trips"]) if t]
                near = [s for s, t in fit if t < args.near_ns]
                far = [s for s, t in fit if t >= args.near_ns]
                placed = [
                    f"{statistics.median(g):.3f} ({len(g)})" if g else "" for g in [near, far]
                ]
            rows.append(
                (
                    build,
                    runs[0]["file"],
                    name,
                    f"{statistics.median(seconds):.3f}",
                    f"{min(seconds):.3f}",
                    fastest,
                    *placed,
                )
            )
    header = (
        "build",
        "imported from",
        "epoch of",
        "median s",
        "best s",
        "fastest steps s",
        "fit median s, CPUs near (epochs)",
        "far",
    )
    print(workloads.markdown_table(header, rows))
    if trips:
        print(
            f"\nCore round trip before each fit epoch (workloads.core_round_trip): "
            f"{min(trips):.0f}-{max(trips):.0f} ns; near: below {args.near_ns:g} ns"
        )


if __name__ == "__main__":
    main()
