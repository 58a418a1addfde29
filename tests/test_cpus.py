"""The CPUs a process can keep busy (fastnaive._cpus): its affinity and its cgroup's CPU
quota, read from cgroup trees laid out as v1 and v2 mount them; and the cap that training
puts on its threads there (engine.Step.threads), OpenMP's limit restored after."""

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture
def uncapped_threads():
    """This module tests the cap: conftest's fixture of the same name, which lifts it for the
    other tests, is overridden here by one that does nothing."""


@pytest.mark.parametrize(
    ("membership", "files", "expected"),
    [
        # v2: the quota in CPUs; "max" sets none.
        ("0::/job\n", {"job/cpu.max": "150000 100000\n"}, 1.5),
        ("0::/job\n", {"job/cpu.max": "max 100000\n"}, None),
        ("0::/job\n", {"job/cpu.max": "50000 100000\n"}, 0.5),
        # The smallest over the levels above too.
        ("0::/a/b\n", {"a/b/cpu.max": "400000 100000", "a/cpu.max": "200000 100000"}, 2),
        ("0::/a/b\n", {"a/b/cpu.max": "max 100000", "cpu.max": "300000 100000"}, 3),
        # A container sees its own cgroup at the mount's root, whatever /proc names; a path
        # above the namespace's root (..) reads no further up than the mount.
        ("0::/docker/abc\n", {"cpu.max": "200000 100000"}, 2),
        ("0::/../../elsewhere\n", {"cpu.max": "100000 100000"}, 1),
        # v1: the cpu controller's quota and period, under either mount name.
        (
            "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "250000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            2.5,
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
def test_the_cgroup_cpu_limit_is_the_smallest_quota(tmp_path, membership, files, expected):
    # No mountinfo: the hierarchies are read where systemd mounts them, under root.
    proc, root = cgroup_tree(tmp_path, membership, files)
    assert _cpus.cgroup_cpu_limit(proc, root, str(tmp_path / "absent")) == expected


def test_no_proc_file_means_no_limit(tmp_path):
    assert _cpus.cgroup_cpu_limit(str(tmp_path / "absent"), str(tmp_path)) is None


def mountinfo_line(mount_root, mount_point, kind, options):
    """A /proc/self/mountinfo line of a cgroup file system, spaces escaped as the kernel does."""
    point = str(mount_point).replace(" ", "\\040")
    return f"41 31 0:38 {mount_root} {point} rw,relatime shared:9 - {kind} {kind} {options}\n"


@pytest.mark.parametrize(
    ("membership", "mounts", "files", "expected"),
    [
        # A v2 hierarchy beside v1 ones (systemd's hybrid layout): read where it is mounted.
        (
            "1:cpu:/\n0::/job\n",
            [("/", "unified", "cgroup2", "rw")],
            {"unified/job/cpu.max": "150000 100000"},
            1.5,
        ),
        # A v1 cpu controller mounted elsewhere, its mount's root a container's cgroup: the
        # path below that root, and the levels up to the mount.
        (
            "4:cpu,cpuacct:/docker/abc/sub\n",
            [
                ("/", "memory", "cgroup", "rw,memory"),
                ("/docker/abc", "ctl/cpu here", "cgroup", "rw,cpu,cpuacct"),
            ],
            {
                "ctl/cpu here/sub/cpu.cfs_quota_us": "50000",
                "ctl/cpu here/sub/cpu.cfs_period_us": "100000",
                "ctl/cpu here/cpu.cfs_quota_us": "300000",
                "ctl/cpu here/cpu.cfs_period_us": "100000",
            },
            0.5,
        ),
        # The controller not mounted: none read.
        ("1:cpu:/fn\n", [("/", "memory", "cgroup", "rw,memory")], {}, None),
    ],
)
def test_the_cgroup_hierarchies_are_read_where_mountinfo_puts_them(
    tmp_path, membership, mounts, files, expected
):
    proc, root = cgroup_tree(tmp_path, membership, files)
    # The systemd layout under root holds a quota that must not be read.
    (Path(root) / "job").mkdir(exist_ok=True)
    (Path(root) / "job" / "cpu.max").write_text("10000 100000")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        + "".join(
            mountinfo_line(mount_root, Path(root) / point, kind, options)
            for mount_root, point, kind, options in mounts
        )
    )
    assert _cpus.cgroup_cpu_limit(proc, root, str(mountinfo)) == expected


def test_the_cgroup_mounts_of_this_process_are_folders_that_exist():
    # Against the file itself: a cgroup file system listed means mounts found, and each
    # mount point parsed (octal escapes decoded) names a folder that is there.
    with open(_cpus.PROC_MOUNTINFO) as file:
        listed = [line for line in file if " - cgroup" in line]
    mounts = _cpus.cgroup_mounts()
    assert bool(mounts) == bool(listed)
    assert all(os.path.isdir(point) and root.startswith("/") for point, root in mounts.values())


@pytest.fixture
def fresh_count():
    """usable_cpus read anew in the test, and again after it."""
    _cpus.usable_cpus.cache_clear()
    yield
    _cpus.usable_cpus.cache_clear()


@pytest.mark.parametrize(("limit", "expected"), [(None, 2), (0.5, 1), (1.5, 2), (1, 1), (7, 2)])
def test_usable_cpus_are_the_affinity_within_the_quota_rounded_up(
    monkeypatch, fresh_count, limit, expected
):
    monkeypatch.setattr(_cpus, "affinity_cpus", lambda: 2)
    monkeypatch.setattr(_cpus, "cgroup_cpu_limit", lambda: limit)
    assert _cpus.usable_cpus() == expected


def test_the_affinity_is_the_calling_threads_and_read_once(fresh_count):
    cpus = os.sched_getaffinity(0)
    before = _cpus.usable_cpus()
    try:
        os.sched_setaffinity(0, {min(cpus)})
        assert _cpus.affinity_cpus() == 1
        assert _cpus.usable_cpus() == before  # read once per process
        _cpus.usable_cpus.cache_clear()
        assert _cpus.usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, cpus)
    assert _cpus.affinity_cpus() == len(cpus)


def child_cpus(**environment):
    """(usable_cpus(), affinity_cpus()) in a fresh interpreter run with `environment`."""
    code = "from fastnaive import _cpus; print(_cpus.usable_cpus(), _cpus.affinity_cpus())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    return tuple(map(int, result.stdout.split()))


@pytest.mark.parametrize(
    "binding",
    [{"OMP_PROC_BIND": "close"}, {"OMP_PLACES": "cores", "OMP_PROC_BIND": "true"}],
    ids=["OMP_PROC_BIND", "OMP_PLACES"],
)
def test_openmp_binding_its_threads_leaves_every_cpu_usable(binding):
    # Bound, OpenMP pins the calling thread to one CPU as it loads; the process may still run
    # on all of its CPUs.
    assert child_cpus(**binding) == child_cpus()


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


def test_capped_lowers_the_limit_only_above_the_cpus_and_restores_it(monkeypatch):
    monkeypatch.setattr(_cpus, "usable_cpus", lambda: 2)
    for requested, inside in [(5, 2), (2, 2), (1, 1)]:
        with threadpool_limits(limits=requested):
            with _cpus.capped() as cap:
                assert (cap.n_threads, _kernels.max_threads()) == (inside, inside)
                with _cpus.capped() as nested:
                    assert nested.n_threads == inside
                assert _kernels.max_threads() == inside
            assert _kernels.max_threads() == requested
    with threadpool_limits(limits=5), pytest.raises(KeyError):
        with _cpus.capped():
            raise KeyError("inside")
    with threadpool_limits(limits=5):
        assert _kernels.max_threads() == 5


def test_the_choice_of_kernels_and_an_optimizers_own_step_run_capped(monkeypatch):
    """Step.use_inputs (a Step's set-up, and each per-batch call's) scans x, and
    apply_gradients (update_weights) runs its calls, on OpenMP's default count: capped (x
    large enough for the scan to run in parallel: 400 x 784 elements)."""
    seen = []

    def recording(function):
        def wrapper(*args, **kwargs):
            seen.append(_kernels.max_threads())
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(_kernels, "scan_rows_checked", recording(_kernels.scan_rows_checked))
    monkeypatch.setattr(_kernels, "run_calls", recording(_kernels.run_calls))
    monkeypatch.setattr(_cpus, "usable_cpus", lambda: 1)
    model = make_model()
    x, y = make_data(400, "float32")
    assert x.size >= _kernels.SCAN_PARALLEL_MIN
    with threadpool_limits(limits=3):
        fastnaive.one_training_step(model, x, y)
        scans = len(seen)
        fastnaive.update_weights(model.get_weights(), model.weights)
        assert _kernels.max_threads() == 3
    assert scans >= 1 and len(seen) > scans
    assert set(seen) == {1}
