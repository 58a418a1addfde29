"""One thread opens no parallel region: with every pool limited to one thread, training,
evaluation and prediction run each kernel in the calling thread. A parallel region of one
thread costs about 0.5-1 us to open and close, a dozen times a step. Counted in a process of
its own by tests/gomp_regions.c, preloaded in front of libgomp's GOMP_parallel (the entry
of every `#pragma omp parallel` that Cython's prange emits); on two threads the same calls
open regions, which shows that the counter sees them."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SHIM_SOURCE = Path(__file__).with_name("gomp_regions.c")

# Run in a fresh interpreter with the counter preloaded: each case once on two threads and
# once on one (after a call that plans it), the regions each opened as JSON.
CASES_CODE = r"""
import ctypes, json, sys
import numpy as np
from threadpoolctl import threadpool_limits
import fastnaive
from fastnaive import _cpus

_cpus.usable_cpus = lambda: 1 << 16  # two threads even on one CPU (conftest's uncapped_threads)
shim = ctypes.CDLL(sys.argv[1])
shim.fastnaive_test_regions.restype = ctypes.c_long
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (640, 784)).astype(np.float32)
x[rng.uniform(size=x.shape) < 0.8] = 0  # as sparse as MNIST
y = rng.integers(0, 10, len(x))


def model(sizes=(784, 512, 10), dtype="float32"):
    last = len(sizes) - 2
    return fastnaive.NaiveSequential([
        fastnaive.NaiveDense(a, b, "softmax" if i == last else "relu", dtype=dtype, seed=i)
        for i, (a, b) in enumerate(zip(sizes, sizes[1:]))
    ])


def fit(m, inputs, **kw):
    return lambda: fastnaive.fit(m, inputs, y, epochs=1, verbose=0, **kw)


def book_loop(m):
    def run():
        for images, labels in fastnaive.BatchGenerator(x[:384], y[:384], 128):
            fastnaive.one_training_step(m, images, labels)
    return run


book = model()
cases = {
    "book, SGD": fit(book, x),
    "book, dense inputs": fit(model(), x + np.float32(0.01)),
    "book, momentum": fit(model(), x, optimizer=fastnaive.SGD(1e-3, momentum=0.9)),
    "book, float64": fit(model(dtype="float64"), x.astype(np.float64)),
    "book, batch 1024": fit(model(), x, batch_size=1024, optimizer=fastnaive.SGD(1e-2)),
    "deep, Adam": fit(model((784, 256, 128, 10)), x, optimizer="adam"),
    "the book's loop": book_loop(model()),
    "evaluate": lambda: fastnaive.evaluate(book, x, y),
    "predict": lambda: book.predict(x),
}
counts = {}
for name, call in cases.items():
    for threads in (2, 1):
        with threadpool_limits(threads):
            call()  # plans the step for this thread count
            shim.fastnaive_test_count_regions(1)
            before = [shim.fastnaive_test_regions(t) for t in range(3)]
            call()
            shim.fastnaive_test_count_regions(0)
            after = [shim.fastnaive_test_regions(t) for t in range(3)]
        counts[f"{name}, {threads}"] = [b - a for a, b in zip(before, after)]
print(json.dumps(counts))
"""


@pytest.fixture(scope="module")
def counter(tmp_path_factory):
    """The region counter, compiled with the C compiler Python was built with."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.fail(f"Expected a C compiler ({compiler}) to build tests/gomp_regions.c")
    library = tmp_path_factory.mktemp("regions") / "gomp_regions.so"
    command = [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(SHIM_SOURCE), "-ldl"]
    subprocess.run(command, check=True, capture_output=True)
    return library


def test_one_thread_opens_no_parallel_region(counter):
    # AddressSanitizer's runtime, where the suite runs under it, must stay first.
    preload = " ".join(filter(None, [os.environ.get("LD_PRELOAD"), str(counter)]))
    env = {**os.environ, "LD_PRELOAD": preload}
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(
        [sys.executable, "-c", CASES_CODE, str(counter)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.splitlines()[-1])
    opened = {case: regions for case, regions in counts.items() if case.endswith(", 1")}
    assert opened and all(regions == [0, 0, 0] for regions in opened.values()), opened
    # The counter sees the regions that two threads open, by the count they ask for.
    assert counts["book, SGD, 2"][2] > 0 and counts["deep, Adam, 2"][2] > 0, counts
