"""The peer matrix (matrix.py) in quick mode: every workload against every peer installed, at
1 and 2 threads, each peer's loss after the epoch agreeing with fastnaive's; and the loss
check tells wrong work (a learning rate 1% off, a batch left out) from right.

Run: python -m pytest benchmarks/test_bench_matrix.py -p no:cacheprovider [--quick]
(the same checks with or without --quick: the matrix always runs in its quick mode here).
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import matrix
import peers
import pytest
import workloads

MATRIX = Path(__file__).with_name("matrix.py")
# The epoch must move the loss by this many tolerances, or agreeing would prove little.
DISCRIMINATION = 20


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(the finished `python matrix.py --quick` process, its JSON results)."""
    path = tmp_path_factory.mktemp("matrix") / "matrix.json"
    done = subprocess.run(
        [sys.executable, str(MATRIX), "--quick", "--json", str(path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done, json.loads(path.read_text())


def test_every_workload_every_peer_every_thread_count(quick_run):
    _, results = quick_run
    installed = [peer.name for peer in peers.PEERS if peers.installed(peer)]
    assert sorted(map(int, results["results"])) == matrix.default_threads()
    for n_threads, record in results["results"].items():
        assert len(record["cpus"]) == int(n_threads)
        assert set(record["workloads"]) == set(matrix.WORKLOADS)
        for name in matrix.WORKLOADS:
            entries = record["workloads"][name]["peers"]
            assert list(entries) == installed
            for peer, entry in entries.items():
                assert "error" not in entry, (n_threads, name, peer, entry)
                assert len(entry["seconds"]) == matrix.QUICK_REPEATS
                assert all(seconds > 0 for seconds in entry["seconds"])


def test_every_loss_agrees_and_training_moved_it(quick_run):
    _, results = quick_run
    for record in results["results"].values():
        for name, workload in matrix.WORKLOADS.items():
            result = record["workloads"][name]
            rtol = matrix.WARM_UP_RTOL[workload.dtype]
            assert matrix.epoch_rtol(workload, quick=True) == rtol
            reference = result["peers"]["fastnaive"]
            for key in ("warm_up_loss", "loss"):
                for peer, entry in result["peers"].items():
                    assert matrix.agrees(entry[key], reference[key], rtol), (name, peer, key)
                moved = abs(reference[key] - result["initial_loss"])
                assert moved > DISCRIMINATION * rtol * max(1, reference[key]), (name, key)


def test_tables_name_the_cpu_and_cover_each_workload_and_thread_count(quick_run):
    done, results = quick_run
    out = done.stdout
    assert workloads.cpu_description() in out
    assert any(f"{vector}" in out for vector in ("AVX2", "AVX-512", "no AVX2"))
    n_threads = len(results["results"])
    for name in matrix.WORKLOADS:
        assert out.count(f"### {name}: ") == n_threads
    n_peers = sum(peers.installed(peer) for peer in peers.PEERS)
    table_rows = [line for line in out.splitlines() if line.startswith("| ")]
    # A header and a row per peer per table; a header and a row per workload and thread
    # count in the summary.
    tables = n_threads * len(matrix.WORKLOADS)
    assert len(table_rows) == tables * (1 + n_peers) + 1 + tables


@pytest.fixture(scope="module")
def book_quick():
    """(the book workload, its --quick x and y, the initial weights, fastnaive's loss)."""
    workload = matrix.WORKLOADS["book"]
    images = {"mnist": workloads.mnist_train(matrix.quick_samples(workload))}
    x, y = matrix.workload_data(workload, images, quick=True)
    initial = matrix.initial_weights(workload)
    reference = peers.FastnaivePeer(workload, initial, x, y)
    reference.epoch()
    return workload, x, y, initial, matrix.evaluation_loss(reference.weights(), x, y)


def numpy_loss(workload, initial, x, y, batches=None):
    """The evaluator's loss after the NumPy step trains `batches` of the workload."""
    peer = peers.NumpyPeer(workload, initial, x, y)
    peer.epoch(batches)
    return matrix.evaluation_loss(peer.weights(), x, y)


def test_the_numpy_step_agrees_with_fastnaive(book_quick):
    workload, x, y, initial, reference = book_quick
    loss = numpy_loss(workload, initial, x, y)
    assert matrix.agrees(loss, reference, matrix.WARM_UP_RTOL["float32"])


def test_a_learning_rate_1_percent_off_disagrees(book_quick):
    workload, x, y, initial, reference = book_quick
    off = dataclasses.replace(workload, learning_rate=workload.learning_rate * 1.01)
    loss = numpy_loss(off, initial, x, y)
    assert not matrix.agrees(loss, reference, matrix.WARM_UP_RTOL["float32"])


def test_leaving_out_the_short_last_batch_disagrees(book_quick):
    workload, x, y, initial, reference = book_quick
    loss = numpy_loss(workload, initial, x, y, batches=[0, 1])
    assert not matrix.agrees(loss, reference, matrix.WARM_UP_RTOL["float32"])
