"""The peer matrix: every workload of the performance targets against every peer installed
(fastnaive.fit, PyTorch's eager loop, a jit-compiled JAX step, Keras model.fit, a NumPy
step, scikit-learn's MLPClassifier), at each thread count, as Markdown tables of seconds per
epoch, peer / fastnaive, GFLOP/s and the share of the machine's large-GEMM rate.

Run from the repository root, FASTNAIVE_DATA naming a folder holding mnist.npz:

    python benchmarks/matrix.py [--quick] [--threads 1 2] [--workloads NAME ...]
                                [--peers NAME ...] [--repeats N] [--json PATH] [--isa avx2]

Each thread count runs in its own process, confined to that many CPUs (its affinity) and
with every library told the same count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
threadpoolctl, torch.set_num_threads, tf.config.threading, XLA_FLAGS), so that no library
uses more cores than asked. There, for each workload, every peer starts from the same
initial weights (one draw) and trains one epoch on the same batches in the same order (no
shuffling). Each peer first warms up (compiles, traces) on the first two batches and the
short last one, from the initial weights; then the peers' epochs are timed in turn,
`--repeats` rounds, each round in a rotated order, and the median is reported.

Nobody is timed doing other work: one evaluator scores each peer's weights (cross-entropy
on the epoch's first EVAL_SAMPLES samples, the layers in the workload's dtype, the softmax
in float64) after the warm-up's three batches, which must agree with fastnaive's within
WARM_UP_RTOL, and after the epoch, within the workload's `epoch_rtol`. Over a whole epoch
the peers' rounding differences grow: by about 1e-6 of the loss with SGD, about 2% with
Adam (its normalised steps turn rounding noise in near-zero gradients into full steps),
and without bound where the book's U[0, 0.1) weights make training diverge (on
Fashion-MNIST the loss rises from 7.9 to 16-30 in the epoch, with SGD 1e-2 at batch 1024
from 4.5 to 40-56, the peers' losses scattered over those ranges while NumPy and
scikit-learn, which do the same operations, agree to 1e-7): there only the three batches
are checked. The command exits with status 1 when a loss disagrees or a peer
fails, never on timing.

GFLOP counts the epoch's GEMMs: per dense layer the forward product and the weight gradient,
and the input gradient for every layer but the first. The GEMM rate is the best of NumPy's
matmul and SciPy's BLAS (the one fastnaive calls) on GEMM_SIZE^3 matrices, measured in the
same process at the same thread count (sgemm; dgemm for float64) before the first workload
and again after each, the best of those measurements (the header gives the lowest too): a
spell of the host's (both CPUs on one core) may fall on one of them and halve a two-thread
rate. The floor is the epoch's GEMM FLOP at that rate. "CPU / wall" is the process's CPU
time over the epoch's wall time: the cores a peer really kept busy. With two CPUs or more,
"core round trip" is the time a cache line took to go from the worker's first CPU to its
second and back, measured just before each timed round (workloads.core_round_trip): on a
virtual machine the host may place the two virtual CPUs near each other (about 75 ns on Zen
5) or far apart (300-660 ns) and move them between rounds, and a two-thread epoch that hands
data between its threads at every step runs at the speed of that placement. "pair scaling",
measured right after it (workloads.pair_scaling), is how many times one CPU's throughput two
threads reach on memory of their own: about 2 on two cores, 1.0-1.4 where the host runs both
CPUs on one (threads.py).

--isa avx2 holds every library to AVX2 on a CPU with AVX-512, for a stand-in of an AVX2-only
machine (the same vector widths, not the same cores): fastnaive's sparse kernels through
fastnaive._sparse.select_instruction_set, and the peers through their own switches
(AVX2_ENVIRONMENT: OpenBLAS's core type for SciPy's and NumPy's GEMMs, MKL's and oneDNN's
instruction caps and ATen's for PyTorch, XLA's for JAX, NumPy's dispatch). Without it,
those variables are dropped from the workers' environment where it sets them (a machine
that pins OPENBLAS_CORETYPE=Haswell, say), so that every library runs the kernels its own
detection picks; the header names what was dropped.

--quick trains two batches and a short third per workload (the warm-up's batches), every
peer, one round, small GEMMs: it checks the command and the losses in about two minutes
on an idle machine; its times mean little.
"""

import argparse
import gc
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace

import numpy as np
import peers
import workloads


@dataclass(frozen=True)
class Workload:
    """One table of the matrix: the model, its optimizer, its data, and how closely the
    peers' losses must agree after the epoch (relative; None: not checked, see above)."""

    name: str
    description: str
    dataset: str  # "mnist" or "fashion_mnist"
    sizes: tuple  # (784, hidden..., 10)
    optimizer: str  # "sgd" or "adam"
    learning_rate: float
    batch_size: int
    initializer: str  # a fastnaive.initializers name
    dtype: str = "float32"
    shift: float = 0.0  # added to every input pixel
    noise: float = 0.0  # U[0, noise) added to every input pixel (seeded)
    epoch_rtol: float | None = 1e-4

    @property
    def layers(self):
        """[(fan_in, fan_out), ...]"""
        return list(zip(self.sizes, self.sizes[1:]))

    @property
    def activations(self):
        """Each layer's activation: relu, and softmax last."""
        return ["relu"] * (len(self.sizes) - 2) + ["softmax"]


BOOK = Workload(
    "book",
    "MNIST, 784-512 relu-10 softmax, SGD 1e-3, batch 128, U[0, 0.1)",
    "mnist",
    (784, 512, 10),
    "sgd",
    1e-3,
    128,
    "book",
)
WORKLOADS = {
    w.name: w
    for w in [
        BOOK,
        replace(
            BOOK,
            name="fashion",
            description="the book's on Fashion-MNIST",
            dataset="fashion_mnist",
            epoch_rtol=None,
        ),
        Workload(
            "deep-adam",
            "MNIST, 784-256-128-10, Adam 1e-3, batch 128, Glorot uniform",
            "mnist",
            (784, 256, 128, 10),
            "adam",
            1e-3,
            128,
            "glorot_uniform",
            epoch_rtol=0.1,
        ),
        Workload(
            "wide",
            "MNIST, 784-2048-2048-10, SGD 1e-2, batch 256, Glorot uniform",
            "mnist",
            (784, 2048, 2048, 10),
            "sgd",
            1e-2,
            256,
            "glorot_uniform",
        ),
        replace(
            BOOK,
            name="dense",
            description="the book's on MNIST + 0.01 (every input nonzero)",
            shift=0.01,
        ),
        replace(
            BOOK,
            name="noise",
            description="the book's on MNIST + U[0, 0.01) noise (every input nonzero, no "
            "common value)",
            noise=0.01,
        ),
        replace(
            BOOK,
            name="float64",
            description="the book's in float64",
            dtype="float64",
            epoch_rtol=1e-7,
        ),
        replace(
            BOOK,
            name="big-batch",
            description="the book's model, SGD 1e-2, batch 1024",
            learning_rate=1e-2,
            batch_size=1024,
            epoch_rtol=None,
        ),
    ]
}

STARTED = time.perf_counter()
REFERENCE = peers.FastnaivePeer.name
SEED = 0
EVAL_SAMPLES = 4096
# |loss - fastnaive's| <= rtol * max(1, fastnaive's loss), after the warm-up's three batches:
# the largest gaps measured are 5e-6 of the loss in float32 and, in float64, 1.4e-9 from Keras,
# which keeps its learning rate in float32 (1e-3 is 4.7e-8 off there).
WARM_UP_RTOL = {"float32": 5e-5, "float64": 1e-7}
GEMM_SIZE, QUICK_GEMM_SIZE = 2048, 1024
REPEATS, QUICK_REPEATS = 3, 1
QUICK_SHORT_BATCH = 0.5  # --quick: two batches and a third this share of a batch
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
)
ONE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
# Each library's switch to AVX2 kernels (--isa avx2), set before it loads.
AVX2_ENVIRONMENT = {
    "OPENBLAS_CORETYPE": "Haswell",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL "
    "AVX512_ICL AVX512_SPR",
}
AVX2_XLA_FLAGS = "--xla_cpu_max_isa=AVX2"
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")
DISTRIBUTIONS = [
    ("fastnaive", "fastnaive"),
    ("numpy", "numpy"),
    ("scipy", "scipy"),
    ("torch", "torch"),
    ("jax", "jax"),
    ("jaxlib", "jaxlib"),
    ("tensorflow", "tensorflow-cpu"),
    ("keras", "keras"),
    ("scikit-learn", "scikit-learn"),
    ("threadpoolctl", "threadpoolctl"),
]


def default_threads():
    """[1, 2], or [1] where the process can keep one CPU busy only."""
    return [1, 2] if workloads.usable_cpus() >= 2 else [1]


def add_workloads_argument(parser, default):
    """--workloads NAME ...: some of WORKLOADS, `default` when not given."""
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=sorted(WORKLOADS),
        default=list(default),
        metavar="NAME",
        help=f"default: {' '.join(default)} ({', '.join(sorted(WORKLOADS))})",
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few batches, one round")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=default_threads(),
        metavar="N",
        help="thread counts, one process each (default 1 2, as far as the CPUs allow)",
    )
    add_workloads_argument(parser, WORKLOADS)
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=list(peers.BY_NAME),
        default=list(peers.BY_NAME),
        metavar="NAME",
        help=f"among {', '.join(peers.BY_NAME)}; fastnaive always runs (the reference)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        metavar="N",
        help=f"timed rounds, median reported (default {REPEATS}, {QUICK_REPEATS} with --quick)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--isa",
        choices=["native", "avx2"],
        default="native",
        help="avx2: every library held to AVX2 kernels (a stand-in for an AVX2-only CPU)",
    )
    parser.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else REPEATS
    usable = workloads.usable_cpus()
    if args.repeats < 1 or not all(1 <= n <= usable for n in args.threads):
        parser.error(f"expected --repeats >= 1 and every --threads in [1, {usable}]")
    args.peers = [REFERENCE] + [name for name in args.peers if name != REFERENCE]
    return args


# -- the worker: one process, one thread count ---------------------------------------------


def log(message):
    print(
        f"[{time.perf_counter() - STARTED:6.1f} s wall, {time.process_time():6.1f} s CPU] "
        + message,
        file=sys.stderr,
        flush=True,
    )


def load_images(dataset):
    """(x, labels): a dataset's 60000 training images as float32 (n, 784) in [0, 1]."""
    if dataset == "mnist":
        x, labels = workloads.mnist_train()
    else:
        from fastnaive.datasets import fashion_mnist

        (images, labels), _ = fashion_mnist.load_data()
        x = images.reshape(len(images), -1).astype(np.float32)
        x /= 255
    return x, labels


def quick_samples(workload):
    return 2 * workload.batch_size + int(QUICK_SHORT_BATCH * workload.batch_size)


def workload_data(workload, images, quick):
    """(x, y): the workload's inputs in its dtype (shifted) and labels as intp."""
    x, labels = images[workload.dataset]
    n = quick_samples(workload) if quick else len(x)
    inputs = x[:n].astype(workload.dtype)
    if workload.shift:
        inputs += workload.shift
    if workload.noise:
        noise = np.random.default_rng(SEED).random(inputs.shape) * workload.noise
        inputs += noise.astype(workload.dtype)
    return np.ascontiguousarray(inputs), labels[:n].astype(np.intp)


def initial_weights(workload):
    """One draw of [W0, b0, W1, b1, ...] that every peer starts from."""
    from fastnaive import initializers

    rng = np.random.default_rng(SEED)
    dtype = np.dtype(workload.dtype)
    out = []
    for fan_in, fan_out in workload.layers:
        shape = (fan_in, fan_out)
        out += [initializers.initial_weights(workload.initializer, shape, dtype, rng)]
        out += [np.zeros(fan_out, dtype)]
    return out


def gemm_flop(workload, n_samples):
    """The epoch's GEMM FLOP: forward and weight gradient per layer, input gradient for all
    layers but the first."""
    return sum(
        2 * n_samples * fan_in * fan_out * (2 if i == 0 else 3)
        for i, (fan_in, fan_out) in enumerate(workload.layers)
    )


def evaluation_loss(weights, x, y):
    """Mean cross-entropy of the model `weights` on (x, y): layers in x's dtype, the softmax
    cross-entropy in float64."""
    a = x
    pairs = list(zip(weights[::2], weights[1::2]))
    for W, b in pairs[:-1]:
        a = np.maximum(a @ W.astype(x.dtype) + b.astype(x.dtype), 0)
    W, b = pairs[-1]
    z = (a @ W.astype(x.dtype) + b.astype(x.dtype)).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def gemm_rates(size, repeats):
    """{"float32": {source: FLOP/s}, "float64": {...}}: square GEMMs of `size`, best of
    `repeats` after one warm-up call, through NumPy's matmul and SciPy's BLAS."""
    from scipy.linalg import blas

    rng = np.random.default_rng(0)
    rates = {}
    for dtype, routine in [("float32", blas.sgemm), ("float64", blas.dgemm)]:
        a, b = (rng.random((size, size)).astype(dtype) for _ in range(2))
        c = np.empty_like(a)
        calls = {
            "NumPy matmul": lambda a=a, b=b, c=c: np.matmul(a, b, out=c),
            # (A B)^T = B^T A^T on Fortran-ordered views: no copies.
            "SciPy BLAS": lambda a=a, b=b, routine=routine: routine(1.0, b.T, a.T),
        }
        rates[dtype] = {}
        for source, call in calls.items():
            call()
            rates[dtype][source] = 2 * size**3 / workloads.best_seconds(call, repeats)
    return rates


def warm_up_batches(n_batches):
    """The batches a warm-up runs: the first two and the last (maybe short) one."""
    return sorted({0, min(1, n_batches - 1), n_batches - 1})


def timed_epoch(peer):
    start, cpu = time.perf_counter(), time.process_time()
    peer.epoch()
    return time.perf_counter() - start, time.process_time() - cpu


def run_workload(workload, peer_classes, images, args):
    """One workload's record: sizes, FLOP, the initial loss and every peer's times and loss."""
    x, y = workload_data(workload, images, args.quick)
    n = len(x)
    initial = initial_weights(workload)
    x_eval, y_eval = x[:EVAL_SAMPLES], y[:EVAL_SAMPLES]
    bounds = peers.batch_bounds(n, workload.batch_size)
    record = {
        "n_samples": n,
        "n_batches": len(bounds),
        "gemm_flop": gemm_flop(workload, n),
        "eval_samples": len(x_eval),
        "initial_loss": evaluation_loss(initial, x_eval, y_eval),
        "load_average": os.getloadavg(),
        "peers": {},
    }
    built = {}
    for cls in peer_classes:
        entry = record["peers"][cls.name] = {
            "seconds": [],
            "cpu_seconds": [],
            "round_trips": [],
            "pair_scalings": [],
        }
        try:
            built[cls.name] = peer = cls(workload, initial, x, y)
            peer.epoch(warm_up_batches(len(bounds)))
            entry["warm_up_loss"] = evaluation_loss(peer.weights(), x_eval, y_eval)
            log(f"  {workload.name}: {cls.name} built and warmed up")
        except Exception:
            entry["error"] = traceback.format_exc(limit=-1).strip().splitlines()[-1]
            built.pop(cls.name, None)
            log(f"  {workload.name}: {cls.name} failed: {entry['error']}")
    # What exists now (libraries, peers, data) is never garbage: frozen, the collections
    # during and between the epochs only walk what the epochs allocate.
    gc.collect()
    gc.freeze()
    order = list(built)
    for round_ in range(args.repeats):
        shift = round_ % max(1, len(order))
        for name in order[shift:] + order[:shift]:
            peer, entry = built[name], record["peers"][name]
            if "error" in entry:
                continue
            peer.reset()
            gc.collect()
            if not args.quick:
                workloads.settle()
            round_trip = workloads.core_round_trip()
            scaling = workloads.pair_scaling()
            try:
                seconds, cpu = timed_epoch(peer)
            except Exception:
                entry["error"] = traceback.format_exc(limit=-1).strip().splitlines()[-1]
                log(f"  {workload.name}: {name} failed: {entry['error']}")
                continue
            entry["seconds"].append(seconds)
            entry["cpu_seconds"].append(cpu)
            trip = ""
            if round_trip is not None:
                entry["round_trips"].append(round_trip)
                trip = f" (core round trip {round_trip:.0f} ns"
                if scaling is not None:
                    entry["pair_scalings"].append(scaling)
                    trip += f", pair scaling {scaling:.2f}"
                trip += ")"
            log(f"  {workload.name} round {round_ + 1}: {name} {seconds:.3f} s{trip}")
    for name, peer in built.items():
        entry = record["peers"][name]
        if "error" not in entry:
            entry["loss"] = evaluation_loss(peer.weights(), x_eval, y_eval)
    gc.unfreeze()
    return record


def worker(args):
    """Run the workloads at one thread count; write the record to the --worker path."""
    n_threads = args.threads[0]
    if args.isa == "avx2":
        from fastnaive import _sparse

        _sparse.select_instruction_set("avx2")
    peer_classes = [peers.BY_NAME[name] for name in args.peers]
    limits = peers.configure_threads(n_threads, peer_classes)  # noqa: F841  (kept in force)
    log(f"{n_threads} thread(s): libraries loaded")
    size, rate_repeats = (QUICK_GEMM_SIZE, 1) if args.quick else (GEMM_SIZE, 3)
    measured_rates = [gemm_rates(size, rate_repeats)]
    result = {
        "threads": n_threads,
        "cpus": sorted(os.sched_getaffinity(0)),
        "gemm_size": size,
        "workloads": {},
    }
    images = {}
    for name in args.workloads:
        workload = WORKLOADS[name]
        if workload.dataset not in images:
            images[workload.dataset] = load_images(workload.dataset)
        log(f"{n_threads} thread(s): {name}")
        result["workloads"][name] = run_workload(workload, peer_classes, images, args)
        if "keras" in {cls.module for cls in peer_classes}:
            import keras

            keras.backend.clear_session()
        gc.collect()
        measured_rates.append(gemm_rates(size, rate_repeats))
    # Per dtype and source the best measurement; per dtype each measurement's best source.
    result["gemm_rates"] = {
        dtype: {source: max(r[dtype][source] for r in measured_rates) for source in rates}
        for dtype, rates in measured_rates[0].items()
    }
    result["gemm_rate_series"] = {
        dtype: [max(r[dtype].values()) for r in measured_rates] for dtype in measured_rates[0]
    }
    from threadpoolctl import threadpool_info

    result["thread_pools"] = [
        {key: pool.get(key) for key in ("internal_api", "num_threads", "filepath")}
        for pool in threadpool_info()
    ]
    with open(args.worker, "w") as file:
        json.dump(result, file)


# -- the parent: one worker per thread count, then the tables -------------------------------


def pinned_instruction_sets():
    """The variables of AVX2_ENVIRONMENT set in this environment, {name: value}: a native run
    drops them, so that every library takes the kernels its own detection picks."""
    return {name: os.environ[name] for name in AVX2_ENVIRONMENT if name in os.environ}


def isa_environment(isa="native"):
    """This process's environment with AVX2_ENVIRONMENT's variables for isa "avx2", without
    them (pinned_instruction_sets) for "native"."""
    env = {name: value for name, value in os.environ.items() if name not in AVX2_ENVIRONMENT}
    if isa == "avx2":
        env.update(AVX2_ENVIRONMENT)
    return env


def worker_environment(n_threads, isa="native"):
    env = isa_environment(isa)
    env.update({name: str(n_threads) for name in THREAD_VARIABLES})
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["JAX_PLATFORMS"] = "cpu"
    xla_flags = [env.get("XLA_FLAGS", "")]
    if n_threads == 1:
        xla_flags.append(ONE_THREAD_XLA_FLAGS)
    if isa == "avx2":
        xla_flags.append(AVX2_XLA_FLAGS)
    env["XLA_FLAGS"] = " ".join(flag for flag in xla_flags if flag)
    return env


def run_worker(n_threads, args):
    """Run this script as a worker confined to n_threads CPUs; return its record."""
    cpus = sorted(os.sched_getaffinity(0))[:n_threads]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--worker", path]
        command += ["--threads", str(n_threads), "--repeats", str(args.repeats)]
        command += ["--workloads", *args.workloads, "--peers", *args.peers]
        command += ["--isa", args.isa] + (["--quick"] if args.quick else [])
        subprocess.run(
            command,
            env=worker_environment(n_threads, args.isa),
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
            check=True,
        )
        with open(path) as file:
            return json.load(file)


def vector_extensions():
    """The CPU's vector flags among VECTOR_FLAGS, from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = set(value.split())
                return [flag for flag in VECTOR_FLAGS if flag in flags]
    return []


def versions():
    out = {}
    for label, distribution in DISTRIBUTIONS:
        try:
            out[label] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            out[label] = "not installed"
    return out


def header(args, skipped, load_start):
    lines = [
        "# fastnaive against its peers, one epoch per workload",
        "",
        f"CPU: {workloads.cpu_description()}; vector flags: {' '.join(vector_extensions())}; "
        f"{os.cpu_count()} cores ({workloads.usable_cpus()} usable); "
        f"Python {platform.python_version()}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "Load average at start (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*load_start),
        "Command: python benchmarks/matrix.py " + " ".join(sys.argv[1:]),
        *(
            [
                "Instruction sets: every library held to AVX2 (--isa avx2): "
                + ", ".join(f"{k}={v}" for k, v in AVX2_ENVIRONMENT.items())
                + f", XLA_FLAGS={AVX2_XLA_FLAGS}, fastnaive's sparse kernels on avx2"
            ]
            if args.isa == "avx2"
            else [
                "Instruction sets: each library's own detection; dropped from the environment: "
                + ", ".join(f"{k}={v}" for k, v in pinned_instruction_sets().items())
            ]
            if pinned_instruction_sets()
            else []
        ),
        "",
        f"Seconds per epoch: median of {args.repeats} interleaved round(s) after a warm-up "
        "(the first two batches and the last). Losses: cross-entropy on the epoch's first "
        f"{EVAL_SAMPLES} samples, one evaluator for all, after the warm-up (from the shared "
        "initial weights) and after the last timed epoch; each must agree with fastnaive's "
        "within the tolerance shown, relative to max(1, loss). GFLOP/s: the epoch's GEMM "
        "FLOP per second. 'of GEMM rate': that over the large-GEMM rate measured in the same "
        "process (sgemm; dgemm for float64), the best of its measurements before the first "
        "workload and after each. Floor: the GEMM FLOP at that rate. CPU / wall: "
        "the cores the process kept busy during the epoch.",
    ]
    if args.quick:
        lines.append("--quick: a few batches per workload; the times mean little.")
    if skipped:
        lines.append("Not installed: " + ", ".join(skipped))
    return "\n".join(lines)


def agrees(loss, reference, rtol):
    """True when |loss - reference| <= rtol * max(1, |reference|), both finite."""
    return math.isfinite(loss) and abs(loss - reference) <= rtol * max(1.0, abs(reference))


def epoch_rtol(workload, quick):
    """The epoch's tolerance: the warm-up's with --quick (the same three batches)."""
    return WARM_UP_RTOL[workload.dtype] if quick else workload.epoch_rtol


def loss_cell(loss, reference, rtol):
    """'loss (agrees, +d)', or DISAGREES, or 'not checked' where rtol is None."""
    verdict = (
        "not checked"
        if rtol is None
        else "agrees"
        if agrees(loss, reference, rtol)
        else "DISAGREES"
    )
    return f"{loss:.6f} ({verdict}, {loss - reference:+.1e})"


def rate_line(result):
    parts = []
    for dtype, rates in result["gemm_rates"].items():
        best = max(rates.values())
        detail = ", ".join(f"{source} {rate / 1e9:.1f}" for source, rate in rates.items())
        series = result["gemm_rate_series"][dtype]
        parts.append(
            f"{dtype} {best / 1e9:.1f} GFLOP/s ({detail}; {len(series)} measurements, "
            f"lowest {min(series) / 1e9:.1f})"
        )
    return f"GEMM {result['gemm_size']}^3, the best of the run's: " + "; ".join(parts)


def workload_table(workload, record, rates, quick):
    """(Markdown lines, failures, summary) for one workload at one thread count."""
    rate = max(rates[workload.dtype].values())
    floor = record["gemm_flop"] / rate
    entries = record["peers"]
    reference = entries[REFERENCE]
    base = statistics.median(reference["seconds"]) if reference["seconds"] else math.nan
    checks = [
        ("warm_up_loss", "after the warm-up", WARM_UP_RTOL[workload.dtype]),
        ("loss", "after the epoch", epoch_rtol(workload, quick)),
    ]
    rows, failures, fastest = [], [], None
    for name, entry in entries.items():
        if "error" in entry:
            rows.append((name, "failed: " + entry["error"], *[""] * 9))
            failures.append(f"{workload.name}: {name} failed: {entry['error']}")
            continue
        cells = []
        for key, when, rtol in checks:
            expected = reference[key]
            cells.append(loss_cell(entry[key], expected, rtol))
            if rtol is not None and not agrees(entry[key], expected, rtol):
                failures.append(
                    f"{workload.name}: {name}'s loss {when} {entry[key]:.6g} disagrees with "
                    f"fastnaive's {expected:.6g}"
                )
        seconds = statistics.median(entry["seconds"])
        cpu = statistics.median(c / s for c, s in zip(entry["cpu_seconds"], entry["seconds"]))
        if name != REFERENCE and (fastest is None or seconds < fastest[1]):
            fastest = (name, seconds)
        trips, scalings = entry.get("round_trips"), entry.get("pair_scalings")
        rows.append(
            (
                name,
                f"{seconds:.3f}",
                f"{min(entry['seconds']):.3f}-{max(entry['seconds']):.3f}",
                f"{seconds / base:.2f}",
                f"{record['gemm_flop'] / seconds / 1e9:.1f}",
                f"{record['gemm_flop'] / seconds / rate:.2f}",
                f"{cpu:.2f}",
                f"{min(trips):.0f}-{max(trips):.0f}" if trips else "",
                f"{min(scalings):.2f}-{max(scalings):.2f}" if scalings else "",
                *cells,
            )
        )
    epoch_check = epoch_rtol(workload, quick)
    lines = [
        f"### {workload.name}: {workload.description}",
        "",
        f"{record['n_samples']} samples in {record['n_batches']} batches, "
        f"{record['gemm_flop'] / 1e9:.2f} GEMM GFLOP; floor {floor:.3f} s; "
        f"fastnaive / floor {base / floor:.2f}; loss before training "
        f"{record['initial_loss']:.6f}; tolerances {WARM_UP_RTOL[workload.dtype]:g} after "
        "the warm-up, "
        + ("none" if epoch_check is None else f"{epoch_check:g}")
        + f" after the epoch; load average {record['load_average'][0]:.1f}",
        "",
        workloads.markdown_table(
            [
                "peer",
                "s / epoch",
                "range",
                "peer / fastnaive",
                "GFLOP/s",
                "of GEMM rate",
                "CPU / wall",
                "core round trip, ns",
                "pair scaling",
                "loss after the warm-up (vs fastnaive)",
                "loss after the epoch (vs fastnaive)",
            ],
            rows,
        ),
        "",
    ]
    summary = {"fastnaive": base, "floor": floor, "fastest": fastest}
    return lines, failures, summary


def summary_table(results, names):
    """Per workload and thread count: fastnaive, the fastest peer, the floor ratio, and
    fastnaive's speed-up from 1 thread."""
    rows = []
    for name in names:
        one = results.get(1, {}).get(name)
        for n_threads, by_name in results.items():
            s = by_name[name]
            fastest = s["fastest"]
            rows.append(
                (
                    name,
                    n_threads,
                    f"{s['fastnaive']:.3f}",
                    f"{fastest[0]} {fastest[1]:.3f}" if fastest else "",
                    f"{fastest[1] / s['fastnaive']:.2f}" if fastest else "",
                    f"{s['fastnaive'] / s['floor']:.2f}",
                    f"{one['fastnaive'] / s['fastnaive']:.2f}" if one else "",
                )
            )
    return workloads.markdown_table(
        [
            "workload",
            "threads",
            "fastnaive s",
            "fastest peer s",
            "fastest peer / fastnaive",
            "fastnaive / floor",
            "fastnaive 1-thread / this",
        ],
        rows,
    )


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    skipped = [name for name in args.peers if not peers.installed(peers.BY_NAME[name])]
    args.peers = [name for name in args.peers if name not in skipped]
    load_start = os.getloadavg()
    records = {n: run_worker(n, args) for n in args.threads}
    print(header(args, skipped, load_start))
    print()
    failures, summaries = [], {}
    for n_threads, result in records.items():
        print(f"## {n_threads} thread(s), CPUs {result['cpus']}")
        print()
        print(rate_line(result))
        print()
        summaries[n_threads] = {}
        for name in args.workloads:
            lines, failed, summary = workload_table(
                WORKLOADS[name], result["workloads"][name], result["gemm_rates"], args.quick
            )
            print("\n".join(lines))
            failures += [f"{n_threads} thread(s), {failure}" for failure in failed]
            summaries[n_threads][name] = summary
    print("## Summary")
    print()
    print(summary_table(summaries, args.workloads))
    print()
    print("Load average at end (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"args": vars(args), "versions": versions(), "results": records}, file)
    if failures:
        print("\nFAILED:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
