"""Find and load a 28x28, ten-class image dataset laid out like keras.datasets.mnist.

The places searched, in order: the `path` argument, the FASTNAIVE_DATA
environment variable, the Keras cache, any system folders (a Debian
package's), then a TensorFlow download.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastnaive._files import BadArchive, NpzReader
from fastnaive._validation import path as checked_path
from fastnaive.datasets._idx import read_idx

KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
_IDX_NAMES = {
    "x_train": ("train-images", "idx3-ubyte"),
    "y_train": ("train-labels", "idx1-ubyte"),
    "x_test": ("t10k-images", "idx3-ubyte"),
    "y_test": ("t10k-labels", "idx1-ubyte"),
}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when no searched place holds the dataset; the message says where and why."""


@dataclass(frozen=True)
class DatasetSpec:
    """Describes a dataset: its name, .npz file name, Keras cache entry, download and more places.

    `data_subfolder`, when set, makes FASTNAIVE_DATA count only through its
    `npz_name` file or that subfolder, so that datasets whose IDX files share
    names can live side by side in it. `system_folders` holds (label, folder)
    pairs searched after the Keras cache.
    """

    name: str
    npz_name: str
    keras_cache: str
    download: Callable[[], tuple]
    data_subfolder: str = ""
    system_folders: tuple = ()


def load(spec, path=None):
    """Return ((x_train, y_train), (x_test, y_test)) from the first place holding the dataset."""
    if path is not None:
        return _load_explicit(spec, path)
    looked = ["path=: not given"]
    for label, location in _fallback_locations(spec):
        reason = _fallback_state(spec, location)
        if reason is None:
            return _read_source(spec, location)
        looked.append(f"{label}: {reason}")
    return _download(spec, looked)


def describe(spec):
    """Return [(place, state)] for the places load() searches without `path`, in order."""
    states = []
    for label, location in _fallback_locations(spec):
        states.append((label, _fallback_state(spec, location) or "found"))
    return [*states, ("TensorFlow download", "used when no place above holds the data")]


def _download(spec, looked):
    """Return the downloaded dataset, or raise DatasetNotFoundError listing every place looked."""
    try:
        (x_train, y_train), (x_test, y_test) = spec.download()
    except ImportError as exc:
        reason = f'TensorFlow not installed ({exc}); pip install "fastnaive[tf]"'
    except Exception as exc:  # a download fails in many ways; the reason is reported below
        reason = f"download failed: {exc!r}"
    else:
        arrays = dict(zip(KEYS, (x_train, y_train, x_test, y_test)))
        return _validated(arrays, dict.fromkeys(KEYS, "the TensorFlow download"))
    looked = [*looked, f"TensorFlow download: {reason}"]
    raise DatasetNotFoundError(_not_found_message(spec, looked))


def _read_source(spec, location):
    """Return the dataset at `location`: an .npz file, or a folder holding it or the IDX files."""
    if location.is_file():
        return _read_npz(location)
    if (location / spec.npz_name).is_file():
        return _read_npz(location / spec.npz_name)
    return _read_idx_folder(location)


def _load_explicit(spec, path):
    """Return the dataset at an explicitly given `path`, raising when it holds none."""
    location = Path(checked_path(path)).expanduser()
    reason = _why_missing(spec, location)
    if reason is not None:
        raise FileNotFoundError(
            f"Expected path to be an .npz file or a folder holding {spec.npz_name} "
            f"or the four IDX files. Received: path={os.fspath(path)!r} ({reason})"
        )
    return _read_source(spec, location)


def _fallback_locations(spec):
    """Return (label, location or None) for FASTNAIVE_DATA, the Keras cache and system folders."""
    data = os.environ.get("FASTNAIVE_DATA")
    data_place = _data_place(spec, data) if data else ("FASTNAIVE_DATA", None)
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    cache = keras_home / "datasets" / spec.keras_cache
    system = [(f"{label} {folder}", Path(folder)) for label, folder in spec.system_folders]
    return [data_place, (f"Keras cache {cache}", cache), *system]


def _data_place(spec, data):
    """Return (label, location) of `spec`'s dataset in the FASTNAIVE_DATA folder `data`."""
    folder = Path(data).expanduser()
    if not spec.data_subfolder or _is_file(folder / spec.npz_name):
        return f"FASTNAIVE_DATA={data}", folder
    subfolder = folder / spec.data_subfolder
    return f"FASTNAIVE_DATA={data} -> {subfolder}", subfolder


def _fallback_state(spec, location):
    """Return why the searched place `location` holds no dataset source (it may be unset or
    unreadable: the search goes on), or None when it holds one."""
    if location is None:
        return "not set"
    try:
        return _why_missing(spec, location)
    except OSError as exc:
        return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"


def _is_file(path):
    try:
        return path.is_file()
    except OSError:
        return False


def _why_missing(spec, location):
    """Return why `location` holds no dataset source, or None when it holds one; raise OSError
    when it cannot be read."""
    if not location.exists():
        return "no such file or directory"
    if location.is_file() or (location / spec.npz_name).is_file() or _idx_files(location):
        return None
    return f"folder holds neither {spec.npz_name} nor IDX files"


def _not_found_message(spec, looked):
    """Return the message listing every place searched for the dataset and how to provide it."""
    places = "\n".join(f"  - {place}" for place in looked)
    return (
        f"{spec.name} not found. Looked in:\n{places}\n"
        f"To fix: pass path= an .npz file or a folder holding {spec.npz_name} "
        "or the four IDX files; "
        f"or set FASTNAIVE_DATA to {_data_hint(spec)}; "
        'or pip install "fastnaive[tf]" and go online to download it.'
    )


def _data_hint(spec):
    """Return what FASTNAIVE_DATA must hold for `spec`, for the not-found message."""
    if spec.data_subfolder:
        return f"a folder holding {spec.npz_name} or a {spec.data_subfolder}/ folder of IDX files"
    return "such a folder"


def _read_npz(file):
    """Return the dataset in a Keras-layout .npz file, validated; each array's header is checked
    (names, shapes, dtypes, sizes) before its data is read."""
    try:
        with NpzReader(file) as archive:
            missing = [key for key in KEYS if key not in archive.keys]
            if missing:
                received = ", ".join(archive.keys) or "none"
                raise ValueError(
                    f"Expected keys {', '.join(KEYS)} in {file}. Received: keys {received}"
                )
            headers = {key: _npz_header(archive, key, file) for key in KEYS}
            _check_shapes(headers, dict.fromkeys(KEYS, file))
            arrays = archive.read(KEYS)
    except BadArchive as exc:
        raise ValueError(f"Expected an .npz archive at {file}. Received: {exc}") from exc
    return _validated(arrays, dict.fromkeys(KEYS, file))


def _npz_header(archive, key, file):
    """Return (shape, dtype) of array `key`, refusing any but integer arrays."""
    try:
        shape, dtype = archive.header(key)
    except BadArchive as exc:
        raise ValueError(
            f"Expected {key} to be a plain numeric array in {file}. Received: {exc}"
        ) from exc
    if dtype.kind not in "iu":
        raise ValueError(
            f"Expected {key} of dtype uint8, or integers in [0, 255]. "
            f"Received: {key}.dtype={dtype} in {file}"
        )
    return shape


def _idx_files(folder):
    """Return, for each key, the first IDX file present in `folder` under an accepted name."""
    found = {}
    for key, (stem, kind) in _IDX_NAMES.items():
        names = [f"{stem}{sep}{kind}{gz}" for sep in "-." for gz in ("", ".gz")]
        present = [folder / name for name in names if (folder / name).is_file()]
        if present:
            found[key] = present[0]
    return found


def _read_idx_folder(folder):
    """Return the dataset held by the four IDX files in `folder`, validated."""
    files = _idx_files(folder)
    missing = ["-".join(_IDX_NAMES[key]) for key in KEYS if key not in files]
    if missing:
        raise ValueError(
            f"Expected the four IDX files in {folder}. "
            f"Received: no file for {', '.join(missing)} (plain or .gz)"
        )
    return _validated({key: read_idx(file) for key, file in files.items()}, files)


def _validated(arrays, sources):
    """Return ((x_train, y_train), (x_test, y_test)) from `arrays`, checked and cast to uint8."""
    arrays = {key: _as_uint8(key, np.asarray(arrays[key]), sources[key]) for key in KEYS}
    _check_shapes({key: array.shape for key, array in arrays.items()}, sources)
    for key in ("y_train", "y_test"):
        _check_labels(key, arrays[key], sources[key])
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _as_uint8(key, array, source):
    """Return `array` as uint8, converting integers only when every value fits."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        if array.size == 0 or (array.min() >= 0 and array.max() <= 255):
            return array.astype(np.uint8)
        received = f"{key}.dtype={array.dtype} with values in [{array.min()}, {array.max()}]"
    else:
        received = f"{key}.dtype={array.dtype}"
    raise ValueError(
        f"Expected {key} of dtype uint8, or integers in [0, 255]. Received: {received} in {source}"
    )


def _check_labels(key, y, source):
    """Raise ValueError unless the labels `y` lie in [0, 10)."""
    if y.size and y.max() >= NUM_CLASSES:
        raise ValueError(
            f"Expected {key} values in [0, {NUM_CLASSES}). "
            f"Received: max({key})={y.max()} in {source}"
        )


def _check_shapes(shapes, sources):
    """Raise ValueError unless each split has (n, 28, 28) images and n labels."""
    for split in ("train", "test"):
        x_key, y_key = f"x_{split}", f"y_{split}"
        x, y = shapes[x_key], shapes[y_key]
        if len(x) != 3 or x[1:] != IMAGE_SHAPE:
            raise ValueError(
                f"Expected {x_key} of shape (n, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}). "
                f"Received: {x_key}.shape={x} in {sources[x_key]}"
            )
        if y != x[:1]:
            raise ValueError(
                f"Expected {y_key} of shape ({x[0]},) to match {x_key}. "
                f"Received: {y_key}.shape={y} in {sources[y_key]}"
            )
