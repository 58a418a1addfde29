"""What a data-parallel run over MPI adds to training: process groups for the one epoch loop.

Design: every rank holds the whole dataset and a replica of the model. Each global batch of
`batch_size` samples is cut into contiguous per-rank shares (`share`); each rank's Step
computes its share's contribution to the batch-mean gradient straight into its flat
buffer [dW0, db0, ..., loss sum, correct count], the group's reducer sums the buffers over
the ranks, and every rank applies the same optimizer step. The replicas stay identical, and
N ranks reach the weights of one process over the same samples in the same order, up to the
order of floating-point summation.

The reducer sums in rank order. Rank r owns part r of every range it reduces; each rank
sends each owner its copy of that part, the owner adds the N copies in rank order
(((a0 + a1) + a2) + ...) and sends the sum back to every rank: a reduce-scatter and an
all-gather over MPI's nonblocking point-to-point messages, which move 2 (N-1)/N of the
bytes over each link each way, as a ring Allreduce does. Every element is added in the same
order however the buffer is cut into ranges, so a run's bits do not depend on the MPI
library's algorithms, and with overlap (FASTNAIVE_OVERLAP=1) the reduction started layer by
layer during the backward pass (`layer_ready`, overlapping communication with the gradients
of earlier layers; a helper thread moves the messages on meanwhile) gives the bits of one
reduction of the whole buffer after it, on any number of ranks. Overlap is off by default:
on the test bed it hid little (the backward pass after a layer's gradients is short) and
the helper thread cost the ranks of one machine more than that.

No rank waits forever: a reduction, or an end-of-epoch sum, that has not completed within
the step deadline (FASTNAIVE_STEP_TIMEOUT seconds, 60 by default) raises TimeoutError,
naming the ranks it waits for, and the error aborts the job. Rank 0, which runs beside
mpirun, waits REPORT_GRACE seconds less than the others, so that its line is the one the
job prints.

fastnaive.training's loop talks to a group and never asks which kind it holds: LocalGroup is
one process (nothing shared), MPIGroup is the ranks of an mpi4py communicator. A group
supplies only what is the group's: the share of each batch, the reducer, the agreement of
the ranks' arguments, the starting state from rank 0, sums of validation metrics, and what
happens on an error (MPIGroup prints it and aborts every rank, so no rank waits forever in
a collective; a rank that dies is detected by mpirun, which ends the job). mpi4py is
imported only by `world()` and MPIGroup.

An error that every rank raises together (an argument error the ranks agreed on, a resume
error broadcast from rank 0) is marked `shared`: the ranks may all stop without aborting,
and one report of it is enough. Any other error on one rank must end the job with `abort`,
or the other ranks wait for it forever; `world()` makes sure of that for an error that no
code catches.
"""

import math
import os
import sys
import threading
import time
import zlib

import numpy as np

__all__ = [
    "world",
    "group",
    "LocalGroup",
    "MPIGroup",
    "share",
    "checksum",
    "shared",
    "is_shared",
    "STEP_TIMEOUT_VARIABLE",
    "OVERLAP_VARIABLE",
]

# The environment variables MPIGroup reads when not given its settings (mpirun -x passes them).
STEP_TIMEOUT_VARIABLE = "FASTNAIVE_STEP_TIMEOUT"
OVERLAP_VARIABLE = "FASTNAIVE_OVERLAP"
DEFAULT_STEP_TIMEOUT = 60.0
# Ranks other than 0 wait this much longer than the step deadline, so that rank 0's report is
# the job's one line: Open MPI ends the other ranks about 2 s after one aborts the job, later
# over a congested link.
REPORT_GRACE = 10.0
# A rank still alive this long after asking MPI to abort the job exits by itself (Open MPI's
# abort waits for every host, and a host behind a cut link does not answer).
ABORT_GRACE = 5.0
# A thread waiting for a reduction polls MPI without pause, as MPI's own blocking calls do (a
# large message moves one piece per poll, and sleeping between polls slowed the test bed's
# steps by a third), but yields its core to any thread ready to run between polls (4 hosts
# of the test bed on 2 cores took 11 ms a step so, 39 ms without). Once nothing has moved
# for SPIN_SECONDS (a peer far behind, a stalled link) it sleeps between polls, from POLL_MIN
# doubling up to POLL_MAX. The helper thread, which shares a core with the backward pass,
# always sleeps between polls that move nothing.
SPIN_SECONDS = 1.0
POLL_MIN, POLL_MAX = 5e-5, 5e-4


def world():
    """Return MPI.COMM_WORLD, importing mpi4py (the `mpi` extra).

    On more than one rank, an exception that no code catches (sys.excepthook) then aborts
    every rank after its traceback, as `python -m mpi4py` does, unless it is `shared`: a rank
    that exits alone would leave the others waiting in their next collective forever.
    """
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            "Expected mpi4py for distributed training: pip install "
            f'"fastnaive[mpi]". Received: {error}'
        ) from error
    comm = MPI.COMM_WORLD
    if comm.Get_size() > 1 and not getattr(sys.excepthook, "aborts_mpi_job", False):
        sys.excepthook = _aborting_excepthook(sys.excepthook, comm)
    return comm


def _aborting_excepthook(previous, comm):
    def excepthook(kind, error, traceback):
        previous(kind, error, traceback)
        if not is_shared(error):
            _abort(comm, error)

    excepthook.aborts_mpi_job = True
    return excepthook


def shared(error):
    """Mark `error` as raised on every rank together, and return it."""
    error.fastnaive_shared = True
    return error


def is_shared(error):
    """True when `error` is raised on every rank together (see `shared`)."""
    return getattr(error, "fastnaive_shared", False)


def _abort(comm, error):
    """Print `error` as one line naming this rank, then end every rank with exit status 1."""
    message = " ".join(str(error).split())
    print(
        f"fastnaive: error on rank {comm.Get_rank()} of {comm.Get_size()}: "
        f"{type(error).__name__}: {message}; aborting all ranks",
        file=sys.stderr,
        flush=True,
    )
    leave = threading.Timer(ABORT_GRACE, os._exit, (1,))
    leave.daemon = True
    leave.start()
    comm.Abort(1)


def group(comm):
    """The process group of an mpi4py communicator, or of this process alone for None."""
    return LocalGroup() if comm is None else MPIGroup(comm)


def share(start, stop, rank, size):
    """Return the [lo, hi) rows of global batch [start, stop) that `rank` of `size` computes."""
    n = stop - start
    return start + n * rank // size, start + n * (rank + 1) // size


def checksum(*arrays):
    """CRC-32 of the arrays' bytes."""
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8), crc)
    return crc


def _settings(overlap, step_timeout):
    """(overlap, step deadline in seconds or None) from the arguments, else the environment."""
    if overlap is None:
        text = os.environ.get(OVERLAP_VARIABLE, "0")
        if text not in ("0", "1"):
            raise ValueError(
                f"Expected {OVERLAP_VARIABLE} to be 1 (reduce each layer's gradients during "
                f"the backward pass) or 0 (after it). Received: {OVERLAP_VARIABLE}={text!r}"
            )
        overlap = text == "1"
    elif not isinstance(overlap, (bool, np.bool_)):
        raise TypeError(f"Expected overlap to be True or False. Received: overlap={overlap!r}")
    name, value = "step_timeout", step_timeout
    if step_timeout is None:
        name, value = STEP_TIMEOUT_VARIABLE, os.environ.get(STEP_TIMEOUT_VARIABLE)
    seconds = DEFAULT_STEP_TIMEOUT if value is None else value
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, (bool, np.bool_)) or not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(
            f"Expected {name} to be a number of seconds >= 0 (0: no deadline). "
            f"Received: {name}={value!r}"
        )
    return bool(overlap), (seconds or None)


class LocalGroup:
    """One process: every batch is its own, nothing to reduce, agree on or broadcast."""

    rank, size, is_root = 0, 1, True
    comm = reducer = None
    reduce_seconds = 0.0

    def agree(self, error, describe):
        """Raise this process's argument error, if any."""
        if error is not None:
            raise error

    def share(self, start, stop):
        return start, stop

    def broadcast(self, value):
        return value

    def broadcast_weights(self, model):
        pass

    def total(self, *values):
        return values

    def check_identical(self, model, when):
        pass

    def abort(self, error):
        """Nothing to stop but this process: the caller raises the error."""

    def close(self):
        """Nothing to free."""


class MPIGroup:
    """The ranks of an mpi4py communicator, training one model together.

    overlap: start each layer's reduction as soon as the backward pass has produced its
    gradients (True), or reduce the whole buffer after it (False); the results are the same
    bits. step_timeout: the seconds a rank waits for the others' gradients, or for an
    end-of-epoch sum, before it aborts the job (0: forever). Either None reads
    FASTNAIVE_OVERLAP (1 or 0; default 0) and FASTNAIVE_STEP_TIMEOUT (default 60). Creating
    the group is collective: every rank must, with the same settings.
    """

    def __init__(self, comm, *, overlap=None, step_timeout=None):
        from mpi4py import MPI

        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        error = settings = None
        try:
            settings = _settings(overlap, step_timeout)
        except (TypeError, ValueError) as raised:
            error = raised
        self.agree(error, lambda: {"overlap": settings[0], "step_timeout": settings[1]})
        self.overlap, self.step_timeout = settings
        # How long this rank waits: rank 0 gives up first (REPORT_GRACE).
        self.wait_limit = None
        if self.step_timeout is not None:
            self.wait_limit = self.step_timeout + (0.0 if self.is_root else REPORT_GRACE)
        self._reducer = _Reducer(comm.Dup(), self.overlap, self.wait_limit)

    @property
    def reducer(self):
        """The Step's gradient reducer: reduce(flat), and layer_ready(flat, lo, hi) with
        overlap."""
        return self._reducer

    def close(self):
        """Free what the group holds (its communicator, the reducer's requests and thread):
        every rank calls it at the end of fit, as for any collective."""
        self._reducer.close()

    @property
    def reduce_seconds(self):
        """Seconds this rank has waited for reductions after the backward pass: the exposed
        communication time."""
        return self._reducer.seconds

    def agree(self, error, describe):
        """Raise the same ValueError on every rank if any rank's arguments failed (`error`) or
        their description (describe(), a dict of plain values) differs from rank 0's; when
        every rank failed alike, each raises its own `error`. The error raised is shared."""
        mine = describe() if error is None else f"{type(error).__name__}: {error}"
        descriptions = self.comm.allgather(mine)
        if error is not None and all(other == mine for other in descriptions):
            raise shared(error)
        for rank, other in enumerate(descriptions):
            if isinstance(other, str):
                raise shared(
                    ValueError(
                        f"Expected valid arguments on every rank. Received: on rank {rank}, {other}"
                    )
                )
        for rank, other in enumerate(descriptions):
            for key, value in other.items():
                if value != descriptions[0][key]:
                    raise shared(
                        ValueError(
                            f"Expected the same {key} on every rank. Received: "
                            f"{key}={value!r} on rank {rank}, "
                            f"{key}={descriptions[0][key]!r} on rank 0"
                        )
                    )

    def share(self, start, stop):
        return share(start, stop, self.rank, self.size)

    def broadcast(self, value):
        """Rank 0's value (any picklable object) on every rank; an exception is marked shared,
        since every rank raises it."""
        value = self.comm.bcast(value, root=0)
        return shared(value) if isinstance(value, BaseException) else value

    def broadcast_weights(self, model):
        """Copy rank 0's weights to every rank with one Bcast."""
        flat = np.concatenate([w.reshape(-1) for w in model.weights])
        self.comm.Bcast(flat, root=0)
        offset = 0
        for weight in model.weights:
            weight.reshape(-1)[:] = flat[offset : offset + weight.size]
            offset += weight.size
        self.check_identical(model, "after the initial broadcast")

    def total(self, *values):
        """The sums over the ranks of a few numbers, in one Allreduce."""
        sums = np.array(values, dtype=np.float64)
        self._collective(sums, self.MPI.SUM, "for the validation sums")
        return tuple(sums.tolist())

    def check_identical(self, model, when):
        """Raise on every rank unless all ranks hold bit-identical weights."""
        crc = checksum(*model.weights)
        extremes = np.array([crc, -crc], dtype=np.int64)  # max and -min in one Allreduce
        self._collective(extremes, self.MPI.MAX, f"for the weights' checksums {when}")
        if extremes[0] != -extremes[1]:
            raise shared(
                RuntimeError(
                    f"Expected identical weights on every rank {when}. "
                    f"Received: checksums that differ across ranks"
                )
            )

    def _collective(self, values, op, what):
        """In-place Allreduce of `values` by `op`, waited for at most the step deadline."""
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, values, op=op)
        _wait(request.Test, self.wait_limit, lambda: f"no answer from every rank {what}")

    def abort(self, error):
        """Print this rank's error as one line and end every rank of the job with exit status 1."""
        _abort(self.comm, error)


def _wait(done, limit, describe):
    """Call done() until it returns True (finished); it returns "moved" when something moved
    on, else False. Poll, yielding the core between calls, until nothing has moved for
    SPIN_SECONDS, then sleep between calls. After `limit` seconds (None: never), raise
    TimeoutError with describe()."""
    start = idle_since = time.perf_counter()
    pause = POLL_MIN
    while True:
        state = done()
        if state is True:
            return
        now = time.perf_counter()
        if state:
            idle_since, pause = now, POLL_MIN
            continue
        if limit is not None and now - start > limit:
            raise TimeoutError(
                f"{describe()} in {limit:g} s ({STEP_TIMEOUT_VARIABLE}): a host is down, "
                f"or its link is cut or too slow"
            )
        if now - idle_since > SPIN_SECONDS:
            time.sleep(pause)
            pause = min(2 * pause, POLL_MAX)
        else:
            os.sched_yield()


class _Reducer:
    """The gradient reducer of an MPIGroup: rank-ordered sums of the Step's flat buffer.

    With overlap, `layer_ready(flat, lo, hi)` starts the sum of one layer's gradients as the
    backward pass produces them (from the last layer to the first, the same order on every
    rank) and a helper thread moves its messages on; `reduce(flat)` starts the sum of what
    is left (the loss and the hit count), finishes every sum on the calling thread and adds
    the time it waited to `seconds`. Without overlap, `reduce` sums the whole buffer. All MPI
    calls of a step are made under one lock, by one thread at a time.
    """

    def __init__(self, comm, overlap, wait_limit):
        self.comm, self.size, self.wait_limit = comm, comm.Get_size(), wait_limit
        self.seconds = 0.0
        self.steps = 0
        self.flat = None
        self.sums = {}  # (lo, hi) -> _RankOrderedSum of self.flat, tags in creation order
        self.started = []  # this step's ranges, in order
        self.active = []  # started sums not yet finished
        self.lock = threading.Lock()
        self.wakeup = threading.Condition()
        self.helper = None
        self.closed = False
        if not (overlap and self.size > 1):
            self.layer_ready = None

    def close(self):
        """Stop the helper thread, free the persistent requests and the communicator (a
        collective call: every rank closes, after its last reduction)."""
        with self.wakeup:
            self.closed = True
            self.wakeup.notify()
        if self.helper is not None:
            self.helper.join()
        for total in self.sums.values():
            total.free()
        self.flat, self.sums = None, {}
        self.comm.Free()

    def layer_ready(self, flat, lo, hi):
        """Start summing flat[lo:hi], a layer's final gradients, over the ranks."""
        with self.lock:
            self._start(flat, lo, hi)
        if self.helper is None:
            self.helper = threading.Thread(target=self._help, name="fastnaive-reducer")
            self.helper.daemon = True
            self.helper.start()
        with self.wakeup:
            self.wakeup.notify()

    def reduce(self, flat):
        """Sum `flat` over the ranks, in place: finish the sums started, after starting the
        rest of the buffer's."""
        self.steps += 1
        if self.size == 1:
            return
        start = time.perf_counter()
        with self.lock:
            covered = 0
            for lo, hi in sorted(self.started) + [(flat.size, flat.size)]:
                if lo > covered:
                    self._start(flat, covered, lo)
                covered = max(covered, hi)
            self.started = []
            try:
                _wait(self._progress, self.wait_limit, self._missing)
            finally:
                self.seconds += time.perf_counter() - start

    def _start(self, flat, lo, hi):
        if flat is not self.flat:
            for old in self.sums.values():
                old.free()
            self.flat, self.sums = flat, {}
        total = self.sums.get((lo, hi))
        if total is None:
            total = _RankOrderedSum(self.comm, flat, lo, hi, tag=2 * len(self.sums))
            self.sums[lo, hi] = total
        total.start()
        self.started.append((lo, hi))
        self.active.append(total)

    def _progress(self):
        """Move every started sum on: True when all are finished, "moved" when one moved on,
        else False. The caller holds the lock."""
        moved = False
        for total in self.active:
            moved = total.progress() or moved
        if moved:
            self.active = [total for total in self.active if not total.finished]
        return True if not self.active else ("moved" if moved else False)

    def _missing(self):
        """Which ranks the unfinished sums wait for: those whose copies have not arrived, or
        else those whose sums have not."""
        waits = [total.waiting_for() for total in self.active]
        ranks = {rank for gather, _ in waits for rank in gather}
        ranks = ranks or {rank for _, spread in waits for rank in spread}
        who = f"rank {', '.join(map(str, sorted(ranks)))}" if ranks else "the other ranks"
        return f"no gradients from {who} for training step {self.steps}"

    def _help(self):
        """The helper thread: while the backward pass computes, poll the started sums, sleeping
        between polls that move nothing."""
        pause = POLL_MIN
        while True:
            with self.wakeup:
                while not self.active and not self.closed:
                    self.wakeup.wait()
                if self.closed:
                    return
            with self.lock:
                moved = bool(self.active) and self._progress() is not False
            if moved:
                pause = POLL_MIN
            else:
                time.sleep(pause)
                pause = min(2 * pause, POLL_MAX)


class _RankOrderedSum:
    """flat[lo:hi] summed over the ranks, in place and in rank order, by persistent
    nonblocking point-to-point requests started again every step.

    Rank r owns part r of [lo, hi) (cut as `share` cuts a batch). Gather: every rank sends
    its copy of part p to rank p, which receives the N copies of its part; the owner adds
    them in rank order into its part; spread: the owner sends the sum to every rank. The
    spread is received into the parts this rank sent from, so it is posted only once those
    sends are done. Tags: `tag` for the gather, tag + 1 for the spread.
    """

    def __init__(self, comm, flat, lo, hi, tag):
        from mpi4py import MPI

        self.MPI = MPI
        rank, size = comm.Get_rank(), comm.Get_size()
        parts = [share(lo, hi, p, size) for p in range(size)]
        others = [p for p in range(size) if p != rank and parts[p][1] > parts[p][0]]
        a, b = parts[rank]
        self.rank, self.size = rank, size
        self.mine = flat[a:b]
        self.copies = np.empty((size, b - a), flat.dtype)  # row q: rank q's copy of my part
        peers = [q for q in range(size) if q != rank] if b > a else []
        self.gather_in = [comm.Recv_init(self.copies[q], q, tag) for q in peers]
        self.gather_out = [comm.Send_init(flat[slice(*parts[p])], p, tag) for p in others]
        self.spread_out = [comm.Send_init(self.mine, q, tag + 1) for q in peers]
        self.spread_in = [comm.Recv_init(flat[slice(*parts[p])], p, tag + 1) for p in others]
        self.peers, self.owners = peers, others
        self.finished = True

    def start(self):
        self.summed = self.receiving = self.finished = False
        self.MPI.Prequest.Startall(self.gather_in + self.gather_out)

    def progress(self):
        """Advance one stage if its requests are done; True if it moved on."""
        Request = self.MPI.Request
        moved = False
        if not self.summed and Request.Testall(self.gather_in):
            self._add()
            self.MPI.Prequest.Startall(self.spread_out)
            self.summed = moved = True
        if not self.receiving and Request.Testall(self.gather_out):
            self.MPI.Prequest.Startall(self.spread_in)
            self.receiving = moved = True
        if self.summed and self.receiving and Request.Testall(self.spread_out + self.spread_in):
            self.finished = moved = True
        return moved

    def _add(self):
        """My part := the sum of the N copies, added in rank order, in N - 1 passes."""
        mine, copies, rank, size = self.mine, self.copies, self.rank, self.size
        if rank == 0:
            for q in range(1, size):
                np.add(mine, copies[q], out=mine)
            return
        total = copies[0]  # the last addition writes the sum into my part
        for q in range(1, size):
            np.add(total, mine if q == rank else copies[q], out=mine if q == size - 1 else total)

    def waiting_for(self):
        """(ranks whose copies of my part have not arrived, ranks whose sums have not, or
        which have not taken my sum)."""
        if not self.summed:
            return [q for q, r in zip(self.peers, self.gather_in) if not r.Test()], []
        if not self.receiving:  # the spread waits for these owners to take my copies
            return [], [p for p, r in zip(self.owners, self.gather_out) if not r.Test()]
        late = [p for p, r in zip(self.owners, self.spread_in) if not r.Test()]
        return [], late + [q for q, r in zip(self.peers, self.spread_out) if not r.Test()]

    def free(self):
        for request in self.gather_in + self.gather_out + self.spread_out + self.spread_in:
            request.Free()
