"""The CPUs a process can keep busy (fastnaive._cpus): its affinity and its cgroup's CPU
quota, read from cgroup trees laid out as v1 and v2 mount them; and the cap that training
puts on its threads there (engine.Step.threads), OpenMP's limit restored after."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_data, make_model
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import _cpus, _kernels


def cgroup_tree(tmp_path, membership, files):
    """A fake /proc/self/cgroup holding `membership` and a cgroup mount under tmp_path/root
    holding `files` ({relative path: text}); returns (proc_cgroup, root)."""
    proc = tmp_path / "cgroup"
    proc.write_text(membership)
    root = tmp_path / "root"
    root.mkdir()
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(proc), str(root)


@pytest.mark.parametrize(
    ("membership", "files", "expected"),
    [
        # v2: the quota rounded up to whole CPUs; "max" sets none.
        ("0::/job\n", {"job/cpu.max": "150000 100000\n"}, 2),
        ("0::/job\n", {"job/cpu.max": "max 100000\n"}, None),
        ("0::/job\n", {"job/cpu.max": "50000 100000\n"}, 1),
        # The smallest over the levels above too.
        ("0::/a/b\n", {"a/b/cpu.max": "400000 100000", "a/cpu.max": "200000 100000"}, 2),
        ("0::/a/b\n", {"a/b/cpu.max": "max 100000", "cpu.max": "300000 100000"}, 3),
        # A container sees its own cgroup at the mount's root, whatever /proc names.
        ("0::/docker/abc\n", {"cpu.max": "200000 100000"}, 2),
        # v1: the cpu controller's quota and period, under either mount name.
        (
            "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "250000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            3,
        ),
        (
            "1:cpu:/fn\n2:cpuacct:/\n",
            {"cpu/fn/cpu.cfs_quota_us": "100000", "cpu/fn/cpu.cfs_period_us": "100000"},
            1,
        ),
        (
            "1:cpu:/\n",
            {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"},
            None,
        ),
        # Nothing readable, or nothing about the cpu controller.
        ("0::/job\n", {"job/cpu.max": "garbage"}, None),
        ("0::/job\n", {}, None),
        ("3:memory:/job\n", {"memory/job/cpu.max": "100000 100000"}, None),
        ("not a cgroup line\n", {}, None),
    ],
)
def test_the_cgroup_cpu_limit_is_the_smallest_quota_in_whole_cpus(
    tmp_path, membership, files, expected
):
    proc, root = cgroup_tree(tmp_path, membership, files)
    assert _cpus.cgroup_cpu_limit(proc, root) == expected


def test_no_proc_file_means_no_limit(tmp_path):
    assert _cpus.cgroup_cpu_limit(str(tmp_path / "absent"), str(tmp_path)) is None


def test_usable_cpus_are_the_affinity_within_the_quota():
    assert _cpus.affinity_cpus() == len(os.sched_getaffinity(0))
    limit = _cpus.cgroup_cpu_limit()
    expected = _cpus.affinity_cpus() if limit is None else min(_cpus.affinity_cpus(), limit)
    assert _cpus.usable_cpus() == expected >= 1


def test_the_affinity_is_read_at_each_call():
    cpus = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cpus)})
        assert _cpus.usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, cpus)
    assert _cpus.usable_cpus() == min(len(cpus), _cpus.cgroup_cpu_limit() or len(cpus))


def test_a_process_bound_to_one_cpu_can_use_one():
    code = "from fastnaive import _cpus; print(_cpus.usable_cpus(), _cpus.affinity_cpus())"
    cpu = min(os.sched_getaffinity(0))
    result = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["1", "1"]


def threads_inside_fit(model, x, y, requested):
    """OpenMP's limit at each batch's end of a fit asked for `requested` threads, and after."""
    seen = []
    callback = fastnaive.callbacks.LambdaCallback(
        on_batch_end=lambda batch, logs: seen.append(_kernels.max_threads())
    )
    with threadpool_limits(limits=requested):
        fastnaive.fit(model, x, y, 1, 32, callbacks=[callback], verbose=0)
        after = _kernels.max_threads()
    return set(seen), after


def test_training_runs_on_the_usable_cpus_at_most_and_restores_the_limit(monkeypatch):
    x, y = make_data(96, "float32")
    usable = _cpus.usable_cpus()
    # More threads asked than the machine's CPUs: the usable ones run.
    assert threads_inside_fit(make_model(), x, y, usable + 2) == ({usable}, usable + 2)
    # Fewer: as asked.
    assert threads_inside_fit(make_model(), x, y, 1) == ({1}, 1)
    # A quota of one CPU: one thread, the same bits as asked for one.
    monkeypatch.setattr(_cpus, "usable_cpus", lambda: 1)
    capped, alone = make_model(), make_model()
    assert threads_inside_fit(capped, x, y, 3) == ({1}, 3)
    threads_inside_fit(alone, x, y, 1)
    for a, b in zip(capped.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
