"""Data-parallel training over MPI, measured on this machine and on the multi-host test bed,
and the cost model checked against it, as Markdown.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz, with
Open MPI and mpi4py installed (the test bed also needs root and iproute2):

    python benchmarks/distributed.py [--quick] [--repeats N] [--only machine|bed]

On this machine (shared memory): one epoch of the book's workload (784-512-10, SGD 1e-3,
global batch 128) as fastnaive.fit with 2 threads, fit(comm=...) on 1 rank x 2 threads and
on 2 ranks x 1 thread, each layer's reduction during the backward pass (overlap) or after
it; one step's compute (1 thread) at several local batch sizes, for the book's model and the
wide one (784-2048-2048-10).

On the test bed (.ci/multihost: hosts in network namespaces, TCP, links shaped with tc's
tbf at 0.2, 1 and 10 Gbit/s): the links' constants (MPI round trip; time of one gradient
reduction of 0.25 to 16 MB on 2 and 4 hosts, fitted as latency + bytes / bandwidth),
epochs of the book's workload on 1, 2 and 4 hosts against the cost model's prediction, and
the wide model's steps with the reduction overlapped or not. Then the model's projection for
8 to 64 hosts and the break-even global batch per link.

Times are the best of --repeats (default 3) after a warm-up. --quick uses 4096 images and
fewer sizes: it checks that the script runs.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import workloads
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import engine, optimizers

MULTIHOST = Path(__file__).resolve().parents[1] / ".ci" / "multihost"
QUICK_SAMPLES = 4096
LOCAL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
WIDE_LOCAL_BATCHES = (16, 32, 64, 128)
GLOBAL_BATCHES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MODELS = {"book": (512,), "wide": (2048, 2048)}
# The links of the test bed: (name, tc rate, bits per second).
LINKS = (
    ("0.2 Gbit/s", "200mbit", 0.2e9),
    ("1 Gbit/s", "1gbit", 1e9),
    ("10 Gbit/s", "10gbit", 1e10),
)
BED_HOSTS = (1, 2, 4)
PROJECTED_HOSTS = (1, 2, 4, 8, 16, 32, 64)
# The bed's hosts share this machine's cores: a rank computes that much slower with more
# hosts than cores.
CORES = os.cpu_count()
# Bytes reduced to measure a link: the smallest gives the latency, the others the bandwidth.
REDUCTION_SIZES = (8, 2**20, 2**22, 2**24)
PING_PONGS = 200
# The bed's epochs are this many images (100 steps): at 0.2 Gbit/s an MNIST epoch on 4
# hosts takes a minute. The wide model's (23 MB per step) are WIDE_STEPS steps.
BED_SAMPLES = 12800
WIDE_STEPS = 20
# Steps of the untimed epoch before the timed ones (connections, caches, thread pools).
WARM_UP_STEPS = 8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4096 images: checks the script")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default: 3)")
    parser.add_argument("--only", choices=("machine", "bed"), help="one of the two parts")
    parser.add_argument("--worker", choices=("fit", "link"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=tuple(MODELS), default="book", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def n_samples(args):
    return QUICK_SAMPLES if args.quick else workloads.N_TRAIN


def model_of(name, seed=0):
    """784 -> hidden relu ... -> 10 softmax, float32."""
    sizes = [workloads.N_FEATURES, *MODELS[name], workloads.N_CLASSES]
    last = len(sizes) - 2
    return fastnaive.NaiveSequential(
        [
            fastnaive.NaiveDense(m, n, "softmax" if i == last else "relu", seed=seed + i)
            for i, (m, n) in enumerate(zip(sizes, sizes[1:]))
        ]
    )


def gradient_bytes(name):
    """Bytes of the reduced buffer: every weight and bias in float32, the loss and hits."""
    return 4 * (sum(w.size for w in model_of(name).weights) + 2)


# Under mpirun


def worker_fit(args):
    """Time fit(comm=...) epochs on --samples images; rank 0 prints JSON."""
    from fastnaive.callbacks import LambdaCallback
    from fastnaive.distributed import world

    comm = world()
    x, y = workloads.mnist_train(args.samples)
    model = model_of(args.model)
    marks = []
    timer = LambdaCallback(
        on_epoch_begin=lambda epoch, logs: marks.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: marks.append(time.perf_counter()),
    )
    results = []
    warm_up = WARM_UP_STEPS * workloads.BATCH_SIZE
    with threadpool_limits(limits=args.threads):
        fastnaive.fit(
            model, x[:warm_up], y[:warm_up], 1, workloads.BATCH_SIZE, comm=comm, verbose=0
        )
        for _ in range(args.repeats):
            history = fastnaive.fit(
                model, x, y, 1, workloads.BATCH_SIZE, comm=comm, verbose=0, callbacks=[timer]
            )
            results.append((marks[-1] - marks[-2], history.allreduce_seconds))
    if comm.Get_rank() == 0:
        epoch, exposed = min(results)
        print(json.dumps({"epoch": epoch, "exposed": exposed}))


def worker_link(args):
    """The MPI round trip between ranks 0 and 1, and the best time of one reduction of each
    of REDUCTION_SIZES bytes by the gradient reducer (after the backward pass, as without
    overlap); rank 0 prints JSON."""
    from fastnaive.distributed import MPIGroup, world

    comm = world()
    rank = comm.Get_rank()
    message = np.zeros(1)
    trips = []
    for _ in range(PING_PONGS):
        comm.Barrier()
        start = time.perf_counter()
        if rank == 0:
            comm.Send(message, 1)
            comm.Recv(message, 1)
        elif rank == 1:
            comm.Recv(message, 0)
            comm.Send(message, 0)
        trips.append(time.perf_counter() - start)
    reducer = MPIGroup(comm, overlap=False, step_timeout=0).reducer
    seconds = {}
    for size in REDUCTION_SIZES[:3] if args.quick else REDUCTION_SIZES:
        flat = np.zeros(size // 4, np.float32)
        best = math.inf
        for _ in range(PING_PONGS // 4 if size < 2**16 else args.repeats + 1):
            comm.Barrier()
            start = time.perf_counter()
            reducer.reduce(flat)
            best = min(best, time.perf_counter() - start)
        seconds[size] = best
    if rank == 0:
        print(json.dumps({"round_trip": float(np.median(trips)), "reduce": seconds}))


# On this machine


def mpirun_here(args, ranks, threads, overlap):
    """fit(comm=...) on `ranks` local ranks of `threads` threads; return the worker's JSON."""
    command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(ranks)]
    return run_worker(command, args, threads, overlap, "book", n_samples(args))


def run_worker(launcher, args, threads, overlap, model, samples, kind="fit"):
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "FASTNAIVE_OVERLAP": "1" if overlap else "0",
    }
    command = [
        *launcher,
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--threads",
        str(threads),
        "--repeats",
        str(args.repeats),
        "--model",
        model,
        "--samples",
        str(samples),
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


def step_seconds(name, local_batches, repeats=5):
    """{b: best seconds of one rank's step on b samples, 1 thread}: gradients and SGD update,
    as a rank plans it (gradients reduced, here by nobody, before a separate update)."""
    x, labels = workloads.mnist_train(max(local_batches))
    y = labels.astype(np.intp)
    model = model_of(name)
    nobody = types.SimpleNamespace(reduce=lambda flat: None)
    plan = engine.Step(model, max(local_batches), x, optimizer=optimizers.SGD(), reducer=nobody)

    def step(b):
        plan.train(x[:b], y[:b])

    step(1)  # loads SciPy's BLAS, which threadpool_limits can then limit
    with threadpool_limits(limits=1):
        step(max(local_batches))
        return {
            b: workloads.best_seconds(lambda b=b: step(b), repeats if b < 512 else 2)
            for b in local_batches
        }


def machine_report(args, compute):
    single = single_process_epoch(args, 2)
    runs = {}
    for name, ranks, threads, overlap in (
        ("1 x 2", 1, 2, False),
        ("2 x 1", 2, 1, False),
        ("2 x 1, overlap", 2, 1, True),
    ):
        workloads.settle()
        runs[name] = mpirun_here(args, ranks, threads, overlap)
    rows = [("fastnaive.fit", "1 x 2", f"{single:.2f}", "-")]
    for name, result in runs.items():
        share = result["exposed"] / result["epoch"]
        rows.append(("fit(comm=...)", name, f"{result['epoch']:.2f}", f"{share:.1%}"))
    print(
        f"## On this machine ({CORES} cores, shared memory), {n_samples(args)} MNIST images, "
        f"global batch {workloads.BATCH_SIZE}\n"
    )
    print(
        workloads.markdown_table(
            ("trainer", "ranks x threads", "s/epoch", "waiting for reductions"), rows
        )
    )
    print("\nOne step's compute on one thread, ms, by local batch:\n")
    print(
        workloads.markdown_table(
            ("model", *map(str, compute["book"])),
            [
                (
                    name,
                    *(f"{seconds[b] * 1e3:.2f}" if b in seconds else "-" for b in compute["book"]),
                )
                for name, seconds in compute.items()
            ],
        )
    )


# On the test bed


class Bed:
    """A test bed of `hosts` hosts (.ci/multihost), taken down by close()."""

    def __init__(self, hosts):
        self.name = self.multihost("up", hosts).strip()
        self.hosts = hosts

    def multihost(self, *args):
        return subprocess.run(
            [str(MULTIHOST), *map(str, args)], check=True, capture_output=True, text=True
        ).stdout

    def shape(self, rate):
        for host in range(1, self.hosts + 1):
            self.multihost("shape", self.name, host, rate)

    def launcher(self, n_hosts):
        return [str(MULTIHOST), "mpirun", self.name, str(n_hosts)]

    def close(self):
        self.multihost("down", self.name)


def bucket_bytes(bits_per_second):
    """The bytes of the bed's token buckets at that rate (.ci/multihost's shape): 1 ms of
    traffic, and at least one 64 KiB packet."""
    return max(bits_per_second / 8 * 1e-3, 65536 + 1514)


def interpolated(compute, batch):
    """compute(batch), interpolated linearly between the measured local batches."""
    batches = sorted(compute)
    return float(np.interp(batch, batches, [compute[b] for b in batches]))


def epoch_seconds(compute, link, n_bytes, hosts, global_batch, samples, contention=1.0, bed=False):
    """The cost model: steps * (compute(global batch / hosts) * contention + allreduce), the
    reduction's on `link` (None: no reduction) after that much computation."""
    steps = -(-samples // global_batch)
    local = interpolated(compute, -(-global_batch // hosts)) * contention
    allreduce = 0.0 if link is None else link.allreduce(n_bytes, hosts, bed, after=local)
    return steps * (local + allreduce)


class Link:
    """One link's cost of a reduction of n_bytes over `hosts` hosts: 2 (N-1)/N * bytes /
    bandwidth + latency, latency = 2 (round trip / 2 + (N-1) * overhead): two rounds (gather,
    spread) of N-1 concurrent messages, each round a one-way trip plus each message's cost
    to post and complete (`overhead`).

    From one link's measurements {hosts: {"round_trip", "reduce": {bytes: seconds}}}: for
    each host count, the latency is the time of the smallest reduction and the bandwidth the
    slope fitted to the others. The model's overhead and bandwidth are the 2 hosts' (one
    core each): the 4 hosts of the bed share 2 cores, so their latency is mostly waiting
    for a core.

    The bed's links are token buckets (tc's tbf) of `bucket` bytes each way: a message
    passes at memory speed as far as the bucket holds tokens, which refill at the link's
    rate while the ranks compute. On the bed (bed=True) a reduction after `after` seconds
    of computation so sends min(bucket, after * rate) of its bytes at no cost. A real link
    has no such bucket (bucket 0, the projections).
    """

    def __init__(self, measured, rate, bucket):
        self.rate, self.bucket = rate, bucket
        self.round_trip = measured[2]["round_trip"]
        self.latency, self.bandwidth = {}, {}
        for hosts, found in measured.items():
            sizes = sorted(int(size) for size in found["reduce"])
            self.latency[hosts] = found["reduce"][str(sizes[0])]
            bits = [2 * (hosts - 1) / hosts * size * 8 for size in sizes[1:]]
            times = [found["reduce"][str(size)] for size in sizes[1:]]
            slope = np.polyfit(bits, times, 1)[0] if len(bits) > 1 else times[0] / bits[0]
            self.bandwidth[hosts] = 1 / slope
        self.overhead = max((self.latency[2] - self.round_trip) / 2, 0.0)

    def allreduce(self, n_bytes, hosts, bed=False, after=0.0):
        """Seconds of one reduction; bed=True: on the bed, with its latency and bandwidth for
        exactly this many hosts and its bucket refilled during `after` seconds."""
        if hosts == 1:
            return 0.0
        sent = 2 * (hosts - 1) / hosts * n_bytes  # each way, by each host
        if bed:
            latency, bandwidth = self.latency[hosts], self.bandwidth[hosts]
            sent = max(0.0, sent - min(self.bucket, after * self.rate / 8))
        else:
            latency = self.round_trip + 2 * (hosts - 1) * self.overhead
            bandwidth = self.bandwidth[2]
        return sent * 8 / bandwidth + latency


def bed_report(args, compute):
    samples = QUICK_SAMPLES if args.quick else BED_SAMPLES
    wide_samples = WIDE_STEPS * workloads.BATCH_SIZE
    bed = Bed(max(BED_HOSTS))
    measured, epochs, wide = {}, {}, {}
    try:
        epochs[1] = run_worker(bed.launcher(1), args, 1, False, "book", samples)
        for name, rate, _ in LINKS:
            bed.shape(rate)
            measured[name] = {
                hosts: run_worker(bed.launcher(hosts), args, 1, False, "book", 0, "link")
                for hosts in BED_HOSTS[1:]
            }
            for hosts in BED_HOSTS[1:]:
                for overlap in (False, True):
                    epochs[name, hosts, overlap] = run_worker(
                        bed.launcher(hosts), args, 1, overlap, "book", samples
                    )
            for overlap in (False, True):
                wide[name, overlap] = run_worker(
                    bed.launcher(2), args, 1, overlap, "wide", wide_samples
                )
    finally:
        bed.close()
    links = {
        name: Link(found, bits, bucket_bytes(bits))
        for (name, _, bits), found in zip(LINKS, measured.values(), strict=True)
    }
    print(
        f"## On the test bed: {max(BED_HOSTS)} hosts in network namespaces sharing this "
        f"machine's {CORES} cores, TCP, each host's link shaped both ways\n"
    )
    links_table(links)
    # The epoch loop's own cost per step (batching, callbacks, the Python between kernels),
    # which the steps timed alone lack: from the 1-host epoch, which runs a rank's step.
    steps = -(-samples // workloads.BATCH_SIZE)
    alone = interpolated(compute["book"], workloads.BATCH_SIZE)
    loop = max(0.0, epochs[1]["epoch"] / steps - alone)
    print(f"\nThe epoch loop's own cost, from the 1-host epoch: {loop * 1e6:.0f} us per step.")
    compute = {name: {b: t + loop for b, t in times.items()} for name, times in compute.items()}
    book_table(epochs, links, compute["book"], samples)
    wide_table(args, wide, links, compute["wide"])
    projection_report(links, compute["book"])


def links_table(links):
    rows = []
    for name, link in links.items():
        rows.append(
            (
                name,
                f"{link.round_trip * 1e6:.0f}",
                *(f"{link.latency[h] * 1e6:.0f}" for h in BED_HOSTS[1:]),
                f"{link.overhead * 1e6:.0f}",
                *(f"{link.bandwidth[h] / 1e9:.2f}" for h in BED_HOSTS[1:]),
            )
        )
    print("Each link's constants: MPI round trip; time of the smallest reduction (8 bytes)")
    print("and bandwidth fitted to reductions of 1 to 16 MB, on 2 and 4 hosts; the")
    print("per-message overhead from the 2 hosts' latency:\n")
    print(
        workloads.markdown_table(
            (
                "link",
                "round trip us",
                *(f"latency us, {h} hosts" for h in BED_HOSTS[1:]),
                "overhead us/message",
                *(f"Gbit/s, {h} hosts" for h in BED_HOSTS[1:]),
            ),
            rows,
        )
    )


def book_table(epochs, links, compute, samples):
    n_bytes = gradient_bytes("book")
    batch = workloads.BATCH_SIZE
    print(
        f"\nThe book's workload, {samples} images (an epoch of {-(-samples // batch)} steps of "
        f"{batch}, {n_bytes:,} bytes reduced per step), s/epoch: measured with the reduction "
        f"after the backward pass and overlapped, against the cost model (the bed's latency, "
        f"bandwidth and token buckets for that many hosts; compute on one core plus the loop's "
        f"cost, times hosts / {CORES} beyond {CORES} hosts, which share the cores; the 1-host "
        f"row gives the loop's cost, so its error is 0):\n"
    )
    single = epochs[1]["epoch"]
    predicted = epoch_seconds(compute, None, n_bytes, 1, batch, samples)
    rows = [("any", 1, f"{single:.2f}", "-", f"{predicted:.2f}", f"{predicted / single - 1:+.0%}")]
    for name, link in links.items():
        for hosts in BED_HOSTS[1:]:
            after, overlapped = epochs[name, hosts, False], epochs[name, hosts, True]
            predicted = epoch_seconds(
                compute, link, n_bytes, hosts, batch, samples, max(1.0, hosts / CORES), bed=True
            )
            rows.append(
                (
                    name,
                    hosts,
                    f"{after['epoch']:.2f}",
                    f"{overlapped['epoch']:.2f}",
                    f"{predicted:.2f}",
                    f"{predicted / after['epoch'] - 1:+.0%}",
                )
            )
    print(
        workloads.markdown_table(
            ("link", "hosts", "measured", "overlapped", "model", "model error"), rows
        )
    )


def wide_table(args, wide, links, compute):
    n_bytes = gradient_bytes("wide")
    steps = -(-WIDE_STEPS * workloads.BATCH_SIZE // workloads.BATCH_SIZE)
    print(
        f"\nThe wide model (784-2048-2048-10, {n_bytes:,} bytes per step) on 2 hosts, "
        f"{steps} steps of {workloads.BATCH_SIZE}, ms per step and ms of it waiting for the "
        f"reduction (exposed), with the reduction after the backward pass and overlapped:\n"
    )
    rows = []
    for name, link in links.items():
        after, overlapped = wide[name, False], wide[name, True]
        predicted = epoch_seconds(compute, link, n_bytes, 2, 128, 128, bed=True)
        rows.append(
            (
                name,
                f"{after['epoch'] / steps * 1e3:.0f}",
                f"{after['exposed'] / steps * 1e3:.0f}",
                f"{overlapped['epoch'] / steps * 1e3:.0f}",
                f"{overlapped['exposed'] / steps * 1e3:.0f}",
                f"{predicted * 1e3:.0f}",
            )
        )
    print(
        workloads.markdown_table(
            (
                "link",
                "step, after",
                "exposed, after",
                "step, overlapped",
                "exposed, overlapped",
                "model, after",
            ),
            rows,
        )
    )


def projection_report(links, compute):
    n_bytes = gradient_bytes("book")
    samples, batch = workloads.N_TRAIN, workloads.BATCH_SIZE
    print(
        f"\n## The model's projection: N hosts of one such core each, {samples} images, the "
        f"book's model, each link's round trip, overhead and 2-host bandwidth\n\n"
        f"s/epoch at global batch {batch}:\n"
    )
    rows = []
    for name, link in links.items():
        rows.append(
            (
                name,
                *(
                    f"{epoch_seconds(compute, link, n_bytes, n, batch, samples):.2f}"
                    for n in PROJECTED_HOSTS
                ),
            )
        )
    print(workloads.markdown_table(("link", *map(str, PROJECTED_HOSTS)), rows))
    print(
        f"\nThe break-even global batch: the smallest of {GLOBAL_BATCHES[0]} to "
        f"{GLOBAL_BATCHES[-1]} at which N hosts finish an epoch sooner than one:\n"
    )
    rows = []
    for name, link in links.items():
        cells = [name]
        for hosts in PROJECTED_HOSTS[1:]:
            even = [
                b
                for b in GLOBAL_BATCHES
                if epoch_seconds(compute, link, n_bytes, hosts, b, samples)
                < epoch_seconds(compute, None, n_bytes, 1, b, samples)
            ]
            cells.append(str(even[0]) if even else f"> {GLOBAL_BATCHES[-1]}")
        rows.append(cells)
    print(workloads.markdown_table(("link", *map(str, PROJECTED_HOSTS[1:])), rows))


def report(args):
    print(f"CPU: {workloads.cpu_description()}\n")
    compute = {
        "book": step_seconds("book", LOCAL_BATCHES[:9] if args.quick else LOCAL_BATCHES),
        "wide": step_seconds("wide", WIDE_LOCAL_BATCHES),
    }
    if args.only != "bed":
        machine_report(args, compute)
    if args.only != "machine":
        print()
        bed_report(args, compute)


def main(argv=None):
    args = parse_args(argv)
    if args.worker == "fit":
        worker_fit(args)
    elif args.worker == "link":
        worker_link(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
