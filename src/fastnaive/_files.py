"""Files written whole or not at all, and archives read at a cost bounded by their size.

Writing: a temporary file in the target's folder, synced, renamed over the target.
Reading: `NpzReader` checks each member's name and .npy header before reading its data, and
never reads more than MAX_INFLATION bytes per byte of the file, so a small hostile file (a
member that inflates to gigabytes, a header that declares a huge shape) is refused cheaply.
"""

import contextlib
import functools
import math
import os
import secrets

import numpy as np

from fastnaive._validation import path as checked_path

__all__ = ["write_npz", "NpzReader", "BadArchive", "inflation_limit", "MAX_INFLATION"]

# The most bytes an archive or a gzip stream may declare per byte of its file. fastnaive's
# files are stored uncompressed (1x); Keras' mnist.npz inflates 4.8x, MNIST's .gz files 4.8x.
MAX_INFLATION = 100
# What every file may declare beyond that, for small files of small arrays.
_SLACK = 1 << 20
_CHUNK = 1 << 20


def inflation_limit(file_size):
    """The most data bytes a file of `file_size` bytes may declare."""
    return MAX_INFLATION * file_size + _SLACK


def write_npz(path, arrays):
    """Write `arrays` to the .npz `path` (stored, as np.savez writes it), renaming a complete,
    synced temporary file over it.

    The temporary file is created with mode 0o666 less the process's umask, as open() would
    create the target itself, without reading or changing the umask.
    """
    path = checked_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = fd = None
    try:
        while fd is None:
            # Named before it exists, so that an interrupt at any point finds it to remove.
            tmp = os.path.join(folder, f".fastnaive-{secrets.token_hex(8)}.npz.tmp")
            with contextlib.suppress(FileExistsError):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            _write_archive(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:  # an interrupt too: the temporary file goes, if not renamed
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        # zipfile, interrupted as it begins or ends a member, fails to close the archive after
        # it: report the interrupt.
        interrupt = _interrupt_behind(error)
        if interrupt is not None:
            raise interrupt from None
        raise
    _fsync_folder(folder)


def _write_archive(f, arrays):
    """The .npz of `arrays` (name -> array, each stored as name.npy) into the file f."""
    import zipfile

    archive = _archive_class()(f, "w", zipfile.ZIP_STORED)
    try:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
        archive.close()
    except BaseException:
        # The file is being removed. An interrupt as a member begins or ends leaves zipfile
        # writing that member, so that closing the archive fails, and the member's handle,
        # once collected, writes on: both write to a _Discard from here on.
        archive.fp = _Discard(archive.start_dir)
        with contextlib.suppress(ValueError):
            archive.close()
        raise


@functools.cache
def _archive_class():
    """zipfile.ZipFile, but that nothing closes it as it is collected: _write_archive closes
    it, or leaves it to a _Discard; NpzReader closes the file it reads. An interrupt inside
    ZipFile's own __init__, or one that leaves the archive in a reference cycle with its
    member's handle (collected in either order), made ZipFile.__del__ print "Exception
    ignored" ("no attribute '_writing'", "an open writing handle"). Defined at first use, as
    zipfile is imported then."""
    import zipfile

    class Archive(zipfile.ZipFile):
        def __del__(self):
            pass

    return Archive


class _Discard:
    """A file that keeps nothing: where an abandoned archive's last writes go (its position
    tracked, as zipfile seeks back over what it wrote)."""

    def __init__(self, position):
        self.position = position

    def write(self, data):
        size = memoryview(data).nbytes
        self.position += size
        return size

    def tell(self):
        return self.position

    def seek(self, offset, whence=os.SEEK_SET):
        self.position = offset if whence == os.SEEK_SET else self.position + offset
        return self.position

    def flush(self):
        pass


def _interrupt_behind(error):
    """The KeyboardInterrupt during whose handling `error` was raised, if any (not itself)."""
    seen = error.__context__
    while seen is not None and not isinstance(seen, KeyboardInterrupt):
        seen = seen.__context__
    return seen


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BadArchive(ValueError):
    """A file that is not an .npz archive of plain arrays within its size; the message says why."""


@contextlib.contextmanager
def _reading():
    """Raise any failure of a damaged archive inside zipfile or NumPy as BadArchive."""
    try:
        yield
    except (BadArchive, MemoryError):
        raise
    except Exception as error:  # a damaged archive fails in many ways inside zipfile and NumPy
        description = f"{type(error).__name__}: {error}"
        raise BadArchive(f"not a readable .npz archive ({description})") from error


class NpzReader:
    """The arrays of an .npz archive, read without pickle, each only after its header is checked.

    Opening raises OSError for the path (missing, a folder); everything wrong with the content
    raises BadArchive (a ValueError) saying what. Use as a context manager.
    """

    def __init__(self, path):
        import zipfile

        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        try:
            with _reading():
                self._budget = inflation_limit(os.fstat(self._file.fileno()).st_size)
                if self._file.read(6) == b"\x93NUMPY":
                    raise BadArchive("a single .npy array, not an .npz archive")
                self._file.seek(0)
                self._zip = _archive_class()(self._file)
                self._members = {}
                for info in self._zip.infolist():
                    if not info.filename.endswith(".npy"):
                        raise BadArchive(f"a member {info.filename!r} that is not an .npy array")
                    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                        raise BadArchive(
                            f"a member {info.filename!r} compressed by method "
                            f"{info.compress_type}, neither stored nor deflated"
                        )
                    self._members[info.filename[: -len(".npy")]] = info
        except BaseException:
            self._file.close()
            raise
        self._headers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._file.close()

    @property
    def keys(self):
        """The names of the archive's arrays, in its order."""
        return list(self._members)

    def header(self, key):
        """(shape, dtype) of array `key`, read from its .npy header alone."""
        if key not in self._headers:
            with _reading(), self._zip.open(self._members[key]) as member:
                shape, fortran_order, dtype = _read_header(member)
            if dtype.hasobject:
                raise BadArchive(f"an array {key} of Python objects (dtype {dtype}), not numbers")
            if any(n < 0 for n in shape):
                raise BadArchive(f"an array {key} of negative shape {shape}")
            self._headers[key] = shape, fortran_order, dtype
        shape, _, dtype = self._headers[key]
        return shape, dtype

    def read(self, keys):
        """{key: array} for `keys`, once their declared sizes together fit the file's budget."""
        sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in map(self.header, keys)]
        if sum(sizes) > self._budget:
            raise BadArchive(
                f"an archive whose arrays {', '.join(keys)} declare {sum(sizes)} bytes, more "
                f"than {MAX_INFLATION} times the file's size"
            )
        self._budget -= sum(sizes)
        return {key: self._read_one(key) for key in keys}

    def _read_one(self, key):
        shape, fortran_order, dtype = self._headers[key]
        array = np.empty(shape[::-1] if fortran_order else shape, dtype)
        data = array.reshape(-1).view(np.uint8)
        with _reading(), self._zip.open(self._members[key]) as member:
            _read_header(member)
            for start in range(0, data.size, _CHUNK):
                chunk = member.read(min(_CHUNK, data.size - start))
                if len(chunk) != min(_CHUNK, data.size - start):
                    raise BadArchive(f"an array {key} whose data ends before its shape {shape}")
                data[start : start + len(chunk)] = np.frombuffer(chunk, np.uint8)
            # Reading to the end checks the member's CRC-32.
            if member.read(1):
                raise BadArchive(f"an array {key} holding more data than its shape {shape}")
        return array.T if fortran_order else array


def _read_header(member):
    """(shape, fortran_order, dtype) from the .npy header at the start of `member`."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise BadArchive(f"an .npy header of format version {version}, not 1.0 or 2.0")
