"""How threads.py and split_step.py count a two-thread epoch (near, shared, far or moved) from
the probes around it, and the probes themselves (placement.c).

Run: python -m pytest benchmarks/test_bench_placement.py -p no:cacheprovider [--quick]
"""

import os

import pytest
import threads
import workloads

NEAR, FAR = workloads.NEAR_NS / 2, workloads.NEAR_NS * 3
CORES, ONE_CORE = 2.0, 1.1


@pytest.mark.parametrize(
    ("trips", "scalings", "kind"),
    [
        ((NEAR, NEAR), (CORES, CORES), "near"),
        ((NEAR, NEAR), (CORES, ONE_CORE), "shared"),
        ((NEAR, NEAR), (ONE_CORE, CORES), "shared"),
        ((NEAR, NEAR), None, "near"),  # no scaling measured: the round trips alone
        ((FAR, FAR), (ONE_CORE, ONE_CORE), "far"),
        ((NEAR, FAR), (CORES, CORES), "moved"),
        ((FAR, NEAR), (ONE_CORE, CORES), "moved"),
        (None, (CORES, CORES), "far"),  # no round trip measured
    ],
)
def test_an_epoch_is_counted_by_its_probes(trips, scalings, kind):
    assert threads.placement(threads.Placement(trips, scalings)) == kind


def test_by_placement_keeps_each_epoch_once_in_its_kind():
    twos = [
        (0.1, threads.Placement((NEAR, NEAR), (CORES, CORES))),
        (0.2, threads.Placement((NEAR, NEAR), (CORES, ONE_CORE))),
        (0.3, threads.Placement((FAR, FAR), (CORES, CORES))),
        (0.4, threads.Placement((NEAR, FAR), None)),
        (0.5, threads.Placement((NEAR, NEAR), (CORES, CORES))),
    ]
    kinds = threads.by_placement(twos)
    assert kinds == {"near": [0.1, 0.5], "shared": [0.2], "far": [0.3], "moved": [0.4]}


def test_placed_returns_what_the_call_returns_and_both_probes():
    result, where = threads.placed(lambda a, b: a + b, 2, 3)
    assert result == 5
    if len(os.sched_getaffinity(0)) < 2 or workloads.placement_library() is None:
        assert where == threads.Placement(None, None)
        return
    assert len(where.trips) == 2 and all(0 < ns < 1e6 for ns in where.trips)
    # Two threads reach between about one and two CPUs' throughput; the fastest rounds leave
    # some slack either way.
    assert len(where.scalings) == 2 and all(0.3 < s < 4 for s in where.scalings)


def test_fastest_steps_sums_each_batch_fastest():
    assert workloads.fastest_steps([[3.0, 1.0, 2.0], [1.0, 2.0, 5.0]]) == 1.0 + 1.0 + 2.0
