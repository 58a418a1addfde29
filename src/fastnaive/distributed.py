"""What a data-parallel run over MPI adds to training: process groups for the one epoch loop.

Design: every rank holds the whole dataset and a replica of the model. Each global batch of
`batch_size` samples is cut into contiguous per-rank shares (`share`); each rank's Step
computes its share's contribution to the batch-mean gradient straight into its flat
buffer [dW0, db0, ..., loss sum, correct count], the group's reducer sums the buffers with
one in-place Allreduce, and every rank applies the same optimizer step. The replicas stay
identical, and N ranks reach the weights of one process over the same samples in the same
order, up to the order of floating-point summation.

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

import sys
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
]


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


class MPIGroup:
    """The ranks of an mpi4py communicator, training one model together."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        self.reduce_seconds = 0.0

    @property
    def reducer(self):
        """The Step's gradient reducer: this group (reduce)."""
        return self

    def reduce(self, flat):
        """Sum `flat` over the ranks, in place: one Allreduce per step."""
        start = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
        self.reduce_seconds += time.perf_counter() - start

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
        self.comm.Allreduce(self.MPI.IN_PLACE, sums, op=self.MPI.SUM)
        return tuple(sums.tolist())

    def check_identical(self, model, when):
        """Raise on every rank unless all ranks hold bit-identical weights."""
        crc = checksum(*model.weights)
        if self.comm.allreduce(crc, op=self.MPI.MAX) != self.comm.allreduce(crc, op=self.MPI.MIN):
            raise shared(
                RuntimeError(
                    f"Expected identical weights on every rank {when}. "
                    f"Received: checksums that differ across ranks"
                )
            )

    def abort(self, error):
        """Print this rank's error as one line and end every rank of the job with exit status 1."""
        _abort(self.comm, error)
