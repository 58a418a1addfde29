"""How many CPUs this process can keep busy: the fewest of the CPUs it may run on (its
affinity: taskset, mpirun's binding, a cpuset) and its cgroup's CPU quota (a container's
`--cpus`, a Kubernetes CPU limit, systemd's CPUQuota), at least 1.

A step's threads wait for each other at every parallel region, so a thread more than the
CPUs never helps: on 2 CPUs a book epoch took 0.19 s on 2 threads, 0.37-0.49 s on 4; under
a quota of one CPU, 0.35 s on one thread, 0.42-0.44 on 2. fastnaive.engine caps its threads
here (Step.threads).
"""

import functools
import math
import os

__all__ = ["usable_cpus", "affinity_cpus", "cgroup_cpu_limit"]

PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"


def usable_cpus():
    """min(affinity_cpus(), cgroup_cpu_limit()): the affinity read at each call (0.4 us), the
    quota once per process."""
    limit = _process_cgroup_limit()
    cpus = affinity_cpus()
    return cpus if limit is None else max(1, min(cpus, limit))


def affinity_cpus():
    """The CPUs this process may run on (os.cpu_count() where the system cannot say)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_cpu_limit(proc_cgroup=PROC_CGROUP, root=CGROUP_ROOT):
    """The CPU quota of this process's cgroup and of those above it, rounded up to whole CPUs
    (the smallest, where several levels set one), or None where none is set or none can be
    read. cgroup v2: cpu.max ("max 100000", or "<quota> <period>" in microseconds); v1: the
    cpu controller's cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. Paths that /proc
    names but the mount does not hold (a container's view of its own cgroup) count from the
    mount's root."""
    try:
        with open(proc_cgroup) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            limits += _quotas(root, path, _v2_quota)
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                folder = os.path.join(root, mount)
                if os.path.isdir(folder):
                    limits += _quotas(folder, path, _v1_quota)
                    break
    return min(limits) if limits else None


@functools.cache
def _process_cgroup_limit():
    return cgroup_cpu_limit()


def _quotas(mount, path, read):
    """The whole CPUs of each quota set from path's folder under mount up to mount itself."""
    parts = [part for part in path.split("/") if part]
    quotas = []
    for depth in range(len(parts), -1, -1):
        quota = read(os.path.join(mount, *parts[:depth]))
        if quota is not None:
            quotas.append(max(1, math.ceil(quota)))
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
