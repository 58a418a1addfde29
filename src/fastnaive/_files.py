"""Files written whole or not at all: a temporary file in the target's folder, synced, renamed."""

import os
import secrets

import numpy as np

__all__ = ["write_npz"]


def write_npz(path, arrays):
    """Write `arrays` to the .npz `path`, renaming a complete, synced temporary file over it.

    The temporary file is created with mode 0o666 less the process's umask, as open() would
    create the target itself, without reading or changing the umask.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temporary(folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _create_temporary(folder):
    """Open a new file of a random name in `folder` for writing; return (fd, path)."""
    while True:
        tmp = os.path.join(folder, f".fastnaive-{secrets.token_hex(8)}.npz.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
