"""Data-parallel training over MPI on this machine, and a cost model for a cluster, as Markdown.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz, with
Open MPI and mpi4py installed:

    python benchmarks/distributed.py [--quick] [--repeats N]

Measured: one epoch of the book's workload (784-512-10, SGD 1e-3, global batch 128) as
fastnaive.fit with 2 threads, fit(comm=...) on 1 rank x 2 threads and on 2 ranks x 1
thread, with the seconds spent in the Allreduce; one Allreduce of the gradient buffer on
2 ranks; one step's compute (1 thread) at several local batch sizes. Modelled: an epoch on
N single-threaded ranks of this speed, one per host, over a ring Allreduce. Times are the
best of --repeats epochs (default 3) after a warm-up epoch. --quick uses 4096 images.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import workloads
from threadpoolctl import threadpool_limits

from fastnaive import engine, optimizers

QUICK_SAMPLES = 4096
LOCAL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
GLOBAL_BATCHES = (32, 64, 128, 256, 512, 1024, 2048)
RANKS = (1, 2, 4, 8, 16)
# (name, bandwidth in bit/s, per-message latency in s)
NETWORKS = (("10 Gbit/s, 5 us", 10e9, 5e-6), ("100 Gbit/s, 2 us", 100e9, 2e-6))
ALLREDUCE_REPEATS = 200
# The Allreduce buffer: every weight and bias, plus the loss sum and the correct count.
BUFFER_BYTES = 4 * (784 * 512 + 512 + 512 * 10 + 10) + 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4096 images: checks the script")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs (default: 3)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def n_samples(args):
    return QUICK_SAMPLES if args.quick else workloads.N_TRAIN


def worker(args):
    """Under mpirun: time fit(comm=...) epochs and one Allreduce; rank 0 prints JSON."""
    import fastnaive
    from fastnaive.callbacks import LambdaCallback
    from fastnaive.distributed import world

    comm = world()
    x, y = workloads.mnist_train(n_samples(args))
    model = workloads.book_model()
    marks = []
    timer = LambdaCallback(
        on_epoch_begin=lambda epoch, logs: marks.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: marks.append(time.perf_counter()),
    )
    results = []
    with threadpool_limits(limits=args.threads):
        for _ in range(args.repeats + 1):
            history = fastnaive.fit(
                model, x, y, 1, workloads.BATCH_SIZE, comm=comm, verbose=0, callbacks=[timer]
            )
            results.append((marks[-1] - marks[-2], history.allreduce_seconds))
        allreduce = allreduce_seconds(comm)
    if comm.Get_rank() == 0:
        epoch, in_allreduce = min(results[1:])
        print(json.dumps({"epoch": epoch, "allreduce": in_allreduce, "one_allreduce": allreduce}))


def allreduce_seconds(comm):
    """Best time of one in-place SUM Allreduce of a BUFFER_BYTES float32 buffer."""
    from mpi4py import MPI

    buffer = np.ones(BUFFER_BYTES // 4, np.float32)
    best = float("inf")
    for _ in range(ALLREDUCE_REPEATS):
        comm.Barrier()
        start = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        best = min(best, time.perf_counter() - start)
    return best


def launch(args, ranks, threads):
    """Run the worker on `ranks` MPI ranks of `threads` threads each; return its JSON result."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    command = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        str(ranks),
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--threads",
        str(threads),
        "--repeats",
        str(args.repeats),
        *(["--quick"] if args.quick else []),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def single_process_epoch(args, threads):
    """Best seconds of one fastnaive.fit epoch of the book's workload on `threads` threads."""
    x, y = workloads.mnist_train(n_samples(args))
    model = workloads.book_model()
    with threadpool_limits(limits=threads):
        workloads.fit_epoch(model, x, y)
        return workloads.best_seconds(lambda: workloads.fit_epoch(model, x, y), args.repeats)


def step_seconds(local_batches, repeats=20):
    """{b: best seconds of one rank's step on b samples, 1 thread}: gradients and SGD update."""
    x, labels = workloads.mnist_train(max(local_batches))
    y = labels.astype(np.intp)
    model = workloads.book_model()
    # As a rank plans it: gradients reduced (here by nobody) before a separate update.
    nobody = types.SimpleNamespace(reduce=lambda flat: None)
    plan = engine.Step(model, max(local_batches), x, optimizer=optimizers.SGD(), reducer=nobody)

    def step(b):
        plan.train(x[:b], y[:b])

    with threadpool_limits(limits=1):
        return {b: workloads.best_seconds(lambda b=b: step(b), repeats) for b in local_batches}


def ring_allreduce(n_bytes, ranks, bandwidth, latency):
    """Seconds of a ring Allreduce: 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency."""
    if ranks == 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * n_bytes * 8 / bandwidth + 2 * (ranks - 1) * latency


def modelled_epoch(compute, global_batch, ranks, allreduce, samples=workloads.N_TRAIN):
    """Seconds of an epoch: steps * (compute(ceil(global_batch / ranks)) + allreduce)."""
    steps = -(-samples // global_batch)
    local = -(-global_batch // ranks)
    return steps * (float(np.interp(local, list(compute), list(compute.values()))) + allreduce)


def measured_table(single, one_rank, two_ranks):
    rows = [
        ("fastnaive.fit", "1 x 2", f"{single:.2f}", "-"),
        (
            "fit(comm=...)",
            "1 x 2",
            f"{one_rank['epoch']:.2f}",
            f"{one_rank['allreduce'] / one_rank['epoch']:.1%}",
        ),
        (
            "fit(comm=...)",
            "2 x 1",
            f"{two_ranks['epoch']:.2f}",
            f"{two_ranks['allreduce'] / two_ranks['epoch']:.1%}",
        ),
    ]
    return workloads.markdown_table(("trainer", "ranks x threads", "s/epoch", "in Allreduce"), rows)


def ranks_table(compute):
    rows = []
    for ranks in RANKS:
        cells = [str(ranks)]
        for _, bandwidth, latency in NETWORKS:
            allreduce = ring_allreduce(BUFFER_BYTES, ranks, bandwidth, latency)
            epoch = modelled_epoch(compute, workloads.BATCH_SIZE, ranks, allreduce)
            cells += [f"{allreduce * 1e3:.3f}", f"{epoch:.2f}"]
        rows.append(cells)
    headers = ["N"] + [
        f"{h} ({name})" for name, _, _ in NETWORKS for h in ("Allreduce ms", "s/epoch")
    ]
    return workloads.markdown_table(headers, rows)


def best_ranks_table(compute):
    rows = []
    for global_batch in GLOBAL_BATCHES:
        cells = [str(global_batch)]
        for _, bandwidth, latency in NETWORKS:
            epochs = {
                n: modelled_epoch(
                    compute, global_batch, n, ring_allreduce(BUFFER_BYTES, n, bandwidth, latency)
                )
                for n in RANKS
            }
            best = min(epochs, key=epochs.get)
            cells.append(f"{best} ({epochs[1] / epochs[best]:.1f}x)")
        rows.append(cells)
    headers = ["global batch"] + [f"best N, speed-up ({name})" for name, _, _ in NETWORKS]
    return workloads.markdown_table(headers, rows)


def report(args):
    single = single_process_epoch(args, 2)
    workloads.settle()
    one_rank = launch(args, 1, 2)
    workloads.settle()
    two_ranks = launch(args, 2, 1)
    workloads.settle()
    compute = step_seconds(LOCAL_BATCHES)
    samples = n_samples(args)
    print(
        f"## Measured on this machine ({os.cpu_count()} cores), {samples} MNIST images, "
        f"global batch {workloads.BATCH_SIZE}\n"
    )
    print(measured_table(single, one_rank, two_ranks))
    print(
        f"\nOne Allreduce of {BUFFER_BYTES} bytes on 2 ranks (shared memory): "
        f"{two_ranks['one_allreduce'] * 1e3:.3f} ms.\n"
    )
    print(
        workloads.markdown_table(
            ("local batch", "step ms (1 thread)"),
            [(b, f"{s * 1e3:.3f}") for b, s in compute.items()],
        )
    )
    predicted = modelled_epoch(
        compute, workloads.BATCH_SIZE, 2, two_ranks["one_allreduce"], samples
    )
    print(
        f"\nModel check, 2 ranks x 1 thread: predicted {predicted:.2f} s/epoch "
        f"(steps x (step(64) + one measured Allreduce)), measured {two_ranks['epoch']:.2f} s."
    )
    print(
        f"\n## Modelled: N hosts of one such core, {workloads.N_TRAIN} images, global batch "
        f"{workloads.BATCH_SIZE}, ring Allreduce of {BUFFER_BYTES} bytes\n"
    )
    print(ranks_table(compute))
    print("\n## Modelled: the N in (1, 2, 4, 8, 16) with the shortest epoch, by global batch\n")
    print(best_ranks_table(compute))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
