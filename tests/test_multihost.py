"""Training on several hosts over TCP, on the test bed of .ci/multihost, with faults.

Each host is a network namespace with its own address (198.18.K.I) on a bridge; mpirun
starts in the first one and reaches the others through .ci/multihost-agent instead of ssh,
over the TCP transport only, and the tests shape, cut and kill hosts and links. Every test
takes its bed down afterwards, even when it fails (the `bed` fixture). The bed needs root,
iproute2 and Open MPI, which CI has: without them these tests fail, never skip.

Every job has a timeout, so that a regression that hangs fails instead of hanging CI. The
fault tests lower the step deadline (FASTNAIVE_STEP_TIMEOUT, 60 s by default) to a few
seconds; the bed makes TCP give up on an unreachable host after about 13 s
(net.ipv4.tcp_retries2 = 5), which bounds how long Open MPI's runtime takes to end the job
once rank 0 has aborted it.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastnaive
from fastnaive import checkpoints

MULTIHOST = Path(__file__).parents[1] / ".ci" / "multihost"
SCRIPTS = Path(__file__).parent / "mpi_scripts"
TIMEOUT = 120
# A job broken by a fault must end within this many seconds of the fault.
FAULT_TIMEOUT = 30
# The step deadline of the fault tests, and how long TCP keeps trying a host behind a cut
# link on the bed (0.2 s doubling 5 times: 12.6 s).
STEP_TIMEOUT = 4
TCP_GIVES_UP = 12.6
# Float32 summation order only, as in test_distributed.
ATOL = 1e-5


class Bed:
    """A test bed of `hosts` hosts (.ci/multihost); mpirun runs in host 1."""

    def __init__(self, hosts, rate="none"):
        self.hosts = hosts
        self.name = multihost("up", hosts, rate).stdout.strip()

    def address(self, host):
        return f"{self.name}.{host}"

    def command(self, n_hosts, *args):
        return [str(MULTIHOST), "mpirun", self.name, str(n_hosts), *map(str, args)]

    def run(self, n_hosts, *args, env=None, timeout=TIMEOUT):
        """Run a command on one rank in each of hosts 1..n_hosts; return the process."""
        return subprocess.run(
            self.command(n_hosts, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment(env),
        )

    def start(self, n_hosts, *args, env=None):
        """Start it in the background: the caller breaks something, then collects it."""
        return subprocess.Popen(
            self.command(n_hosts, *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(env),
        )

    def shape(self, host, rate):
        multihost("shape", self.name, host, rate)

    def link(self, host, state):
        multihost("link", self.name, host, state)

    def kill(self, host):
        multihost("kill", self.name, host)

    def down(self):
        multihost("down", self.name)


def multihost(*args):
    result = subprocess.run(
        [str(MULTIHOST), *map(str, args)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (
        f"Expected .ci/multihost {' '.join(map(str, args))} to succeed (it needs root, iproute2 "
        f"and Open MPI). Received: exit status {result.returncode}: {result.stderr}"
    )
    return result


def environment(extra):
    return {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **(extra or {})}


@pytest.fixture
def bed():
    """Bed(hosts, rate) factory; every bed made is taken down at the end of the test."""
    beds = []

    def make(hosts, rate="none"):
        beds.append(Bed(hosts, rate))
        return beds[-1]

    yield make
    for made in beds:
        made.down()


@pytest.fixture
def problem(tmp_path):
    """data.npz (n samples) and init.npz (a 784-64-10 float32 model); return (x, y)."""

    def make(n_samples):
        rng = np.random.default_rng(0)
        x = rng.random((n_samples, 784), dtype=np.float32)
        y = rng.integers(0, 10, n_samples)
        np.savez(tmp_path / "data.npz", x=x, y=y)
        model = fastnaive.NaiveSequential(
            [
                fastnaive.NaiveDense(784, 64, "relu", seed=1, initializer="glorot_uniform"),
                fastnaive.NaiveDense(64, 10, "softmax", seed=2, initializer="glorot_uniform"),
            ]
        )
        model.save(tmp_path / "init.npz")
        return x, y

    return make


def train_args(tmp_path, out, *args):
    """tests/mpi_scripts/train.py on tmp_path's data and init, writing `out`.npz and .json."""
    return [
        sys.executable,
        SCRIPTS / "train.py",
        "--data",
        tmp_path / "data.npz",
        "--init",
        tmp_path / "init.npz",
        "--out",
        tmp_path / f"{out}.npz",
        *args,
    ]


def trained(bed, n_hosts, tmp_path, out, *args, env=None):
    """Train on n_hosts hosts; return (weights, the JSON rank 0 wrote)."""
    result = bed.run(n_hosts, *train_args(tmp_path, out, *args), env=env)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / f"{out}.json") as f:
        report = json.load(f)
    return fastnaive.load_model(tmp_path / f"{out}.npz").weights, report


def single_process(tmp_path, x, y, epochs, **settings):
    """Weights and History of fastnaive.fit in this process from init.npz."""
    model = fastnaive.load_model(tmp_path / "init.npz")
    history = fastnaive.fit(model, x, y, epochs, 128, verbose=0, **settings)
    return model.weights, history


def assert_bits_equal(weights, expected, what):
    for i, (w, e) in enumerate(zip(weights, expected, strict=True)):
        assert np.array_equal(w.view(np.uint32), e.view(np.uint32)), f"{what}: weights[{i}]"


def assert_close(weights, expected):
    for i, (w, e) in enumerate(zip(weights, expected, strict=True)):
        np.testing.assert_allclose(w, e, rtol=0, atol=ATOL, err_msg=f"weights[{i}]")


def epochs_done(folder):
    """Epochs of the last checkpoint in `folder`, 0 without one."""
    try:
        with np.load(folder / checkpoints.STATE_FILE) as state:
            return int(state["epochs_done"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_for_checkpoint(folder, job, epochs=1):
    """Wait until the running job has checkpointed `epochs` epochs."""
    deadline = time.monotonic() + TIMEOUT
    while epochs_done(folder) < epochs:
        if job.poll() is not None or time.monotonic() > deadline:
            job.kill()
            pytest.fail(f"no checkpoint of epoch {epochs}; the job: {job.communicate()[1]}")
        time.sleep(0.05)


def ended(job, since, timeout=FAULT_TIMEOUT):
    """Collect a job broken at time `since`; return (stderr, seconds since `since`)."""
    try:
        _, stderr = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        _, stderr = job.communicate()
        pytest.fail(f"the job still ran {timeout} s after the fault: {stderr}")
    return stderr, time.monotonic() - since


def fastnaive_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("fastnaive:")]


def test_an_allreduce_runs_across_two_namespaces_over_tcp(bed, tmp_path):
    """mpirun in the first namespace starts a rank in each host through the agent; each rank
    sits in its own network namespace, at its host's address, and their Allreduce adds up."""
    two = bed(2)
    # Each rank writes its own file: the ranks' standard outputs reach mpirun's as one
    # stream, where two lines printed at the same moment can come out interleaved.
    probe = (
        "import os, subprocess, sys; import numpy as np; from mpi4py import MPI\n"
        "c = MPI.COMM_WORLD; a = np.array([c.rank + 1.0]); c.Allreduce(MPI.IN_PLACE, a)\n"
        "address = subprocess.check_output(['ip', '-4', '-o', 'addr', 'show', 'eth0'], "
        "text=True).split()[3].split('/')[0]\n"
        "line = f\"{c.rank} {a[0]} {address} {os.readlink('/proc/self/ns/net')}\"\n"
        "open(os.path.join(sys.argv[1], f'rank{c.rank}'), 'w').write(line)"
    )
    result = two.run(2, sys.executable, "-c", probe, str(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [(tmp_path / f"rank{rank}").read_text().split() for rank in range(2)]
    assert [(rank, total, address) for rank, total, address, _ in lines] == [
        ("0", "3.0", two.address(1)),
        ("1", "3.0", two.address(2)),
    ]
    assert lines[0][3] != lines[1][3]  # two network namespaces
    assert lines[0][3] != os.readlink("/proc/self/ns/net")


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_reach_the_weights_of_one_process_with_the_same_bits_every_run(
    bed, problem, tmp_path, hosts
):
    """Shuffling, validation and Adam over TCP: within float rounding of one process; the
    same bits whether each layer is reduced during the backward pass or after it, and with
    one link slowed down."""
    cluster = bed(hosts)
    x, y = problem(1000)
    common = ["--epochs", 2, "--optimizer", "adam", "--shuffle", "--seed", 5]
    common += ["--validation-split", 0.2]
    weights, report = trained(
        cluster, hosts, tmp_path, "overlap", *common, env={"FASTNAIVE_OVERLAP": "1"}
    )
    expected, history = single_process(
        tmp_path, x, y, 2, optimizer="adam", shuffle=True, seed=5, validation_split=0.2
    )
    assert_close(weights, expected)
    assert report["params"] == {**history.params, "ranks": hosts}
    for key, values in history.history.items():
        np.testing.assert_allclose(report["history"][key], values, rtol=1e-5, err_msg=key)
    blocking = trained(
        cluster, hosts, tmp_path, "blocking", *common, env={"FASTNAIVE_OVERLAP": "0"}
    )
    cluster.shape(2, "20mbit")
    slow = trained(cluster, hosts, tmp_path, "slow", *common)
    for what, (other, other_report) in {"blocking": blocking, "slow link": slow}.items():
        assert_bits_equal(other, weights, what)
        assert other_report["history"] == report["history"], what


@pytest.mark.parametrize("hosts", [2, 4])
def test_reductions_are_sums_in_rank_order_that_move_on_during_the_backward_pass(
    bed, tmp_path, hosts
):
    """tests/mpi_scripts/reductions.py: the reducer's sums, blocking or layer by layer, are
    NumPy's rank-ordered sums bit for bit, and a layer's reduction finishes while the thread
    that started it calls no MPI function."""
    cluster = bed(hosts)
    out = tmp_path / "reductions.json"
    result = cluster.run(hosts, sys.executable, SCRIPTS / "reductions.py", out, timeout=60)
    assert result.returncode == 0, result.stderr
    with open(out) as f:
        ranks = json.load(f)
    assert len(ranks) == hosts
    for found in ranks:
        checks = {key: value for key, value in found.items() if isinstance(value, bool)}
        assert len(checks) == 10 and all(checks.values()), found


def test_a_killed_host_ends_the_job_and_its_checkpoint_resumes_on_fewer_hosts(
    bed, problem, tmp_path
):
    """Every process of host 3 killed mid-training: mpirun ends the job within seconds,
    naming the host; the last checkpoint, resumed on 2 hosts, reaches the weights of an
    uninterrupted run on 2 hosts."""
    cluster = bed(3)
    problem(1000)
    folder = tmp_path / "checkpoints"
    common = ["--optimizer", "adam", "--shuffle", "--seed", 3, "--checkpoint-dir", folder]
    job = cluster.start(3, *train_args(tmp_path, "killed", "--epochs", 8, *common, "--pause", 0.05))
    wait_for_checkpoint(folder, job)
    killed_at = time.monotonic()
    cluster.kill(3)
    stderr, seconds = ended(job, killed_at)
    assert job.returncode != 0 and seconds < FAULT_TIMEOUT
    lost = [line for line in stderr.splitlines() if "lost communication" in line]
    assert len(lost) == 1 and cluster.address(3) in stderr, stderr
    assert "Traceback" not in stderr, stderr
    done = epochs_done(folder)
    assert 1 <= done < 8
    resumed, _ = trained(cluster, 2, tmp_path, "resumed", "--epochs", 8, "--resume", *common)
    uninterrupted, _ = trained(cluster, 2, tmp_path, "whole", "--epochs", 8, *common[:-2])
    assert_close(resumed, uninterrupted)


def test_a_killed_rank_ends_the_job(bed, problem, tmp_path):
    """Rank 1 SIGKILLed at its third batch, its host still up: mpirun names it and ends the
    job."""
    cluster = bed(3)
    problem(1000)
    start = time.monotonic()
    result = cluster.run(3, *train_args(tmp_path, "out", "--fail", "kill"), timeout=FAULT_TIMEOUT)
    assert result.returncode != 0
    assert time.monotonic() - start < FAULT_TIMEOUT
    noticed = [line for line in result.stderr.splitlines() if "exited on signal 9" in line]
    assert len(noticed) == 1 and "rank 1" in noticed[0], result.stderr


def test_a_cut_link_ends_the_job_after_the_step_deadline_with_one_line(bed, problem, tmp_path):
    """Host 2's end of its link set down mid-training: rank 0 stops waiting after the step
    deadline and prints the one line of the job, naming rank 1 (and rank 2 when the cut
    caught it waiting for rank 1's sums, so that it could not send its next gradients
    either); Open MPI's runtime then ends the job once TCP gives up on host 2."""
    cluster = bed(3)
    problem(1000)
    folder = tmp_path / "checkpoints"
    args = ["--epochs", 100, "--batch-size", 32, "--pause", 0.02, "--checkpoint-dir", folder]
    job = cluster.start(
        3, *train_args(tmp_path, "out", *args), env={"FASTNAIVE_STEP_TIMEOUT": str(STEP_TIMEOUT)}
    )
    wait_for_checkpoint(folder, job)
    cut_at = time.monotonic()
    cluster.link(2, "down")
    stderr, seconds = ended(job, cut_at, timeout=STEP_TIMEOUT + TCP_GIVES_UP + FAULT_TIMEOUT)
    assert job.returncode != 0
    assert seconds < STEP_TIMEOUT + TCP_GIVES_UP + 15, seconds
    lines = fastnaive_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastnaive: error on rank 0 of 3: TimeoutError: no ")
    assert f"in {STEP_TIMEOUT} s (FASTNAIVE_STEP_TIMEOUT)" in lines[0]
    if "gradients" in lines[0]:  # else the deadline caught an end-of-epoch sum
        named = re.search(r"from rank ([\d, ]+) for", lines[0])
        assert named and "1" in named.group(1).split(", "), lines[0]


def test_a_link_back_within_the_deadline_lets_the_job_go_on_to_the_same_weights(
    bed, problem, tmp_path
):
    """Host 2's link down for 2 s mid-training and up again: TCP retransmits, the job
    finishes, with the weights of a run that lost nothing."""
    cluster = bed(2)
    problem(1000)
    folder = tmp_path / "checkpoints"
    common = ["--epochs", 4, "--optimizer", "adam", "--shuffle", "--seed", 2]
    job = cluster.start(
        2,
        *train_args(tmp_path, "cut", *common, "--pause", 0.05, "--checkpoint-dir", folder),
        env={"FASTNAIVE_STEP_TIMEOUT": "20"},
    )
    wait_for_checkpoint(folder, job)
    cluster.link(2, "down")
    time.sleep(2)
    cluster.link(2, "up")
    _, stderr = job.communicate(timeout=TIMEOUT)
    assert job.returncode == 0, stderr
    with open(tmp_path / "cut.json") as f:
        assert json.load(f)["allreduce_seconds"] > 1.5  # rank 0 waited out the cut
    uninterrupted, _ = trained(cluster, 2, tmp_path, "whole", *common)
    cut = fastnaive.load_model(tmp_path / "cut.npz").weights
    assert_bits_equal(cut, uninterrupted, "after the cut")


def test_a_link_too_slow_for_the_deadline_ends_the_job_with_one_line(bed, problem, tmp_path):
    """Host 2's link slowed to 500 kbit/s mid-training: a step's 200 KB each way cannot cross
    it within a 2 s step deadline; rank 0 names rank 1 and the job ends within seconds."""
    cluster = bed(2)
    problem(1000)
    folder = tmp_path / "checkpoints"
    args = ["--epochs", 100, "--pause", 0.02, "--checkpoint-dir", folder]
    job = cluster.start(2, *train_args(tmp_path, "out", *args), env={"FASTNAIVE_STEP_TIMEOUT": "2"})
    wait_for_checkpoint(folder, job)
    slowed_at = time.monotonic()
    cluster.shape(2, "500kbit")
    stderr, seconds = ended(job, slowed_at)
    assert job.returncode != 0 and seconds < FAULT_TIMEOUT
    lines = fastnaive_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastnaive: error on rank 0 of 2: TimeoutError: no ")
    if "gradients" in lines[0]:
        assert "from rank 1 " in lines[0], lines[0]
