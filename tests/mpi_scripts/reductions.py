"""The gradient reducer of fastnaive.distributed.MPIGroup under mpirun, against NumPy.

    mpirun -n N python reductions.py OUT.json

Every rank fills a buffer laid out as a model's flat gradient buffer (a 784-300-100-10
model's weights and biases, then the loss sum and the hit count) with values of very
different magnitudes drawn from its rank's seed, and reduces it three ways: the whole buffer
after the backward pass (overlap=False), layer by layer from the last as the backward pass
reports them (overlap=True), and the rank-ordered NumPy sum of every rank's buffer
(((a0 + a1) + a2) + ...), which is the oracle. Then, with overlap, rank 0 starts one
layer's reduction and, without calling MPI again, waits for the sum to appear in its buffer:
the helper thread moves the messages on while the calling thread computes. Rank 0 writes
what it found to OUT.json.
"""

import json
import sys
import time

import numpy as np

from fastnaive.distributed import MPIGroup, world

SIZES = [784 * 300, 300, 300 * 100, 100, 100 * 10, 10]
# How long rank 0 waits for a reduction to finish without calling MPI.
PROGRESS_SECONDS = 10.0


def filled(rank, size, dtype):
    rng = np.random.default_rng(rank)
    n = sum(SIZES) + 2
    return (rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))).astype(dtype)


def rank_ordered_sum(comm, flat):
    """The oracle: every rank's buffer, added in rank order."""
    copies = comm.allgather(flat)
    total = copies[0].copy()
    for copy in copies[1:]:
        total += copy
    return total


def reduced(group, flat):
    bounds = np.cumsum([0, *SIZES]).tolist()
    reducer = group.reducer
    if reducer.layer_ready is not None:
        for i in reversed(range(len(SIZES) // 2)):
            reducer.layer_ready(flat, bounds[2 * i], bounds[2 * i + 2])
    reducer.reduce(flat)
    return flat


def main():
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    blocking = MPIGroup(comm, overlap=False, step_timeout=30)
    overlapped = MPIGroup(comm, overlap=True, step_timeout=30)
    found = {"ranks": size}
    for dtype in ("float32", "float64"):
        flat = filled(rank, size, dtype)
        expected = rank_ordered_sum(comm, flat)
        for name, group in (("blocking", blocking), ("overlap", overlapped)):
            for step in range(2):  # the second step runs the persistent requests again
                result = reduced(group, flat.copy())
                found[f"{name} {dtype} step {step} bit-identical"] = bool(
                    np.array_equal(result.view(np.uint8), expected.view(np.uint8))
                )
    # A reduction started by layer_ready finishes while this thread calls no MPI function.
    flat = filled(rank, size, "float32")
    expected = rank_ordered_sum(comm, flat)
    lo, hi = 0, SIZES[0] + SIZES[1]
    comm.Barrier()
    overlapped.reducer.layer_ready(flat, lo, hi)
    start = time.perf_counter()
    while not np.array_equal(flat[lo:hi], expected[lo:hi]):
        if time.perf_counter() - start > PROGRESS_SECONDS:
            break
        time.sleep(1e-3)
    found["finished before reduce"] = bool(np.array_equal(flat[lo:hi], expected[lo:hi]))
    found["seconds before reduce"] = time.perf_counter() - start
    overlapped.reducer.reduce(flat)
    found["overlap bit-identical after reduce"] = bool(np.array_equal(flat, expected))
    results = comm.gather(found)
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
