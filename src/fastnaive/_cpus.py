"""How many CPUs this process can keep busy, and the threads a call runs: the fewest of the
CPUs it may run on (its affinity: taskset, mpirun's binding, a cpuset) and its cgroup's CPU
quota (a container's `--cpus`, a Kubernetes CPU limit, systemd's CPUQuota), at least 1.

A step's threads wait for each other at every parallel region, so a thread more than the
CPUs never helps: on 2 CPUs a book epoch took 0.19 s on 2 threads, 0.37-0.54 s on 4; under
a quota of one CPU, 0.35 s on one thread, 0.37-0.44 on 2. Every call that may run the
kernels in parallel on OpenMP's default thread count does so inside `capped()`
(fastnaive.engine's Step.threads and Step.use_inputs, the optimizers' apply_gradients).
"""

import functools
import math
import os
import re

from fastnaive import _kernels

__all__ = ["usable_cpus", "affinity_cpus", "cgroup_cpu_limit", "cgroup_mounts", "capped"]

_OPENMP = _kernels.openmp_enabled()
PROC_CGROUP = "/proc/self/cgroup"
PROC_MOUNTINFO = "/proc/self/mountinfo"
CGROUP_ROOT = "/sys/fs/cgroup"


@functools.cache
def usable_cpus():
    """min(affinity_cpus(), cgroup_cpu_limit() rounded up), at least 1, read once per process
    (at its first call: reading the affinity takes half a microsecond, a tenth of a step of
    a small model; usable_cpus.cache_clear() reads it again)."""
    cpus = affinity_cpus()
    limit = cgroup_cpu_limit()
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def affinity_cpus():
    """The CPUs this process may run on: OpenMP's count of them (the calling thread's
    affinity, or where OMP_PROC_BIND, OMP_PLACES or GOMP_CPU_AFFINITY bind the threads, which
    pins the calling thread to one CPU, the process's as it started); without OpenMP, the
    calling thread's affinity (os.cpu_count() where the system cannot say)."""
    if _OPENMP:
        return max(1, _kernels.processors())
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class capped:
    """A context in which OpenMP's limit for the calling thread (the threads of the kernels'
    parallel loops that take no count) is at most usable_cpus(), restored after; `n_threads`
    is that count. It changes nothing where the limit is within the CPUs already."""

    __slots__ = ("n_threads", "requested")

    def __init__(self):
        self.requested = _kernels.max_threads()
        self.n_threads = min(self.requested, usable_cpus())

    def __enter__(self):
        if self.n_threads < self.requested:
            _kernels.set_max_threads(self.n_threads)
        return self

    def __exit__(self, *error):
        if self.n_threads < self.requested:
            _kernels.set_max_threads(self.requested)


def cgroup_cpu_limit(proc_cgroup=PROC_CGROUP, root=CGROUP_ROOT, mountinfo=PROC_MOUNTINFO):
    """The CPU quota of this process's cgroup and of those above it, in CPUs (the smallest,
    where several levels set one), or None where none is set or none can be read. cgroup v2:
    cpu.max ("max 100000", or "<quota> <period>" in microseconds); v1: the cpu controller's
    cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. Each hierarchy is read where
    `mountinfo` says it is mounted (a v2 hierarchy beside v1 ones, at /sys/fs/cgroup/unified,
    say, or a v1 cpu controller mounted anywhere), its path taken from the mount's own root;
    where mountinfo names none, under `root` as systemd mounts them. Paths that /proc names
    but the mount does not hold (a container's view of its own cgroup) count from the
    mount's root."""
    try:
        with open(proc_cgroup) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    mounts = cgroup_mounts(mountinfo)
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            key, read, folders = "", _v2_quota, [root]
        elif "cpu" in controllers.split(","):
            key, read = "cpu", _v1_quota
            folders = [os.path.join(root, name) for name in (controllers, "cpu", "cpu,cpuacct")]
        else:
            continue
        if key in mounts:
            folder, mount_root = mounts[key]
            if path == mount_root or path.startswith(mount_root.rstrip("/") + "/"):
                path = path[len(mount_root) :]
            limits += _quotas(folder, path, read)
        else:
            folder = next((f for f in folders if os.path.isdir(f)), None)
            if folder is not None:
                limits += _quotas(folder, path, read)
    return min(limits) if limits else None


def cgroup_mounts(mountinfo=PROC_MOUNTINFO):
    """Where the cgroup hierarchies are mounted, from a /proc/<pid>/mountinfo file: {"": v2's,
    controller name: v1's}, each (mount point, the cgroup path at the mount's root); the
    first mount of each, as the kernel lists them; empty where the file cannot be read."""
    try:
        with open(mountinfo) as file:
            lines = file.read().splitlines()
    except OSError:
        return {}
    mounts = {}
    for line in lines:
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount = (_unescape(fields[4]), _unescape(fields[3]))
        if tail[0] == "cgroup2":
            mounts.setdefault("", mount)
        elif tail[0] == "cgroup":  # its super options name its controllers
            for option in tail[2].split(","):
                if option not in ("rw", "ro"):
                    mounts.setdefault(option, mount)
    return mounts


def _unescape(field):
    """A mountinfo path with its octal escapes (a space as \\040) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _quotas(mount, path, read):
    """The quota of each level that sets one, from path's folder under mount up to mount."""
    parts = [part for part in path.split("/") if part and part != ".."]
    quotas = []
    for depth in range(len(parts), -1, -1):
        quota = read(os.path.join(mount, *parts[:depth]))
        if quota is not None:
            quotas.append(quota)
    return quotas


def _v2_quota(folder):
    try:
        with open(os.path.join(folder, "cpu.max")) as file:
            quota, period = (file.read().split() + ["100000"])[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder):
    try:
        with open(os.path.join(folder, "cpu.cfs_quota_us")) as file:
            quota = int(file.read())
        with open(os.path.join(folder, "cpu.cfs_period_us")) as file:
            period = int(file.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError, ZeroDivisionError):
        return None
