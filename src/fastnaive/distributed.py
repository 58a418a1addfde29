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
"""

import sys
import time
import zlib

import numpy as np

__all__ = ["world", "group", "LocalGroup", "MPIGroup", "share", "checksum"]


def world():
    """Return MPI.COMM_WORLD, importing mpi4py (the `mpi` extra)."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(
            "Expected mpi4py for distributed training: pip install "
            f'"fastnaive[mpi]". Received: {error}'
        ) from error
    return MPI.COMM_WORLD


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
    reducer = None
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
        their description (describe(), a dict of plain values) differs from rank 0's."""
        mine = describe() if error is None else f"{type(error).__name__}: {error}"
        descriptions = self.comm.allgather(mine)
        for rank, other in enumerate(descriptions):
            if isinstance(other, str):
                raise ValueError(
                    f"Expected valid arguments on every rank. Received: on rank {rank}, {other}"
                )
        for rank, other in enumerate(descriptions):
            for key, value in other.items():
                if value != descriptions[0][key]:
                    raise ValueError(
                        f"Expected the same {key} on every rank. Received: "
                        f"{key}={value!r} on rank {rank}, "
                        f"{key}={descriptions[0][key]!r} on rank 0"
                    )

    def share(self, start, stop):
        return share(start, stop, self.rank, self.size)

    def broadcast(self, value):
        """Rank 0's value (any picklable object) on every rank."""
        return self.comm.bcast(value, root=0)

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
            raise RuntimeError(
                f"Expected identical weights on every rank {when}. "
                f"Received: checksums that differ across ranks"
            )

    def abort(self, error):
        """Print this rank's error and end every rank of the job with exit status 1."""
        print(
            f"fastnaive: error on rank {self.rank} of {self.size}: "
            f"{type(error).__name__}: {error}; aborting all ranks",
            file=sys.stderr,
            flush=True,
        )
        self.comm.Abort(1)
