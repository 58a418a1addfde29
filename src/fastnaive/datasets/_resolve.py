"""Find and load a 28x28, ten-class image dataset laid out like keras.datasets.mnist.

The places searched, in order: the `path` argument, the FASTNAIVE_DATA environment
variable, the Keras cache, any system folders (a Debian package's), then a download into
the Keras cache (fastnaive.datasets._download). A `path` or FASTNAIVE_DATA that names
nothing usable is an error naming it: the search never goes on past it to the network.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastnaive._files import BadArchive, NpzReader
from fastnaive._validation import path as checked_path
from fastnaive.datasets._download import DownloadError, fetch
from fastnaive.datasets._idx import read_idx

KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# Where keras.datasets downloads MNIST and Fashion-MNIST from.
KERAS_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_IDX_NAMES = {
    "x_train": ("train-images", "idx3-ubyte"),
    "y_train": ("train-labels", "idx1-ubyte"),
    "x_test": ("t10k-images", "idx3-ubyte"),
    "y_test": ("t10k-labels", "idx1-ubyte"),
}
_IDX_NAME = re.compile(r"(train|t10k)-(images|labels)[-.]idx[13]-ubyte(\.gz)?")


class DatasetNotFoundError(FileNotFoundError):
    """Raised when no searched place holds the dataset; the message says where and why."""


@dataclass(frozen=True)
class DatasetSpec:
    """Describes a dataset: its name, .npz file name, Keras cache entry, downloads and places.

    `keras_cache` is the file or folder under $KERAS_HOME/datasets that holds the dataset;
    `downloads` are the (file name, SHA-256) pairs fetched from `base_url` into the folder
    `download_folder` there when no place holds it. `data_subfolder`, when set, makes
    FASTNAIVE_DATA count only through its `npz_name` file or that subfolder, so that
    datasets whose IDX files share names can live side by side in it. `system_folders`
    holds (label, folder) pairs searched after the Keras cache.
    """

    name: str
    npz_name: str
    keras_cache: str
    downloads: tuple
    download_folder: str = ""
    base_url: str = KERAS_URL
    data_subfolder: str = ""
    system_folders: tuple = ()


def load(spec, path=None):
    """Return ((x_train, y_train), (x_test, y_test)) from the first place holding the dataset."""
    return read(spec, find(spec, path)[1])


def find(spec, path=None, path_name="path"):
    """Return (place, location): where the dataset was found (downloading it into the Keras
    cache when no place holds it) and the file or folder to read there.

    `path_name` names `path` in errors (an option's name, for a command line).
    """
    if path is not None:
        return _explicit(spec, path, path_name)
    looked = [f"{path_name}: not given"]
    for label, location, problem in _fallback_locations(spec):
        if problem is not None:
            raise DatasetNotFoundError(
                "Expected FASTNAIVE_DATA to name an .npz file or a folder holding datasets "
                "(mnist.npz, fashion_mnist.npz, a fashion-mnist/ folder, IDX files). "
                f"Received: FASTNAIVE_DATA={os.environ['FASTNAIVE_DATA']!r} ({problem}); "
                "fix it, or unset it to search the Keras cache and download"
            )
        reason = _fallback_state(spec, location)
        if reason is None:
            return label, location
        looked.append(f"{label}: {reason}")
    return _download(spec, looked, path_name)


def describe(spec):
    """Return [(place, state)] for the places find() searches without `path`, in order."""
    states = []
    for label, location, problem in _fallback_locations(spec):
        if problem is not None:
            states.append((label, f"unusable, an error: {problem}"))
        else:
            states.append((label, _fallback_state(spec, location) or "found"))
    folder = _keras_datasets() / spec.download_folder
    names = [name for name, _ in spec.downloads]
    files = names[0] if len(names) == 1 else f"{{{', '.join(names)}}}"
    download = f"download {spec.base_url}{files} into {folder}"
    return [*states, (download, "when no place above holds the data")]


def source(spec, location):
    """The .npz file or the folder of IDX files that read() reads at `location`."""
    if location.is_file() or not (location / spec.npz_name).is_file():
        return location
    return location / spec.npz_name


def read(spec, location):
    """Return the dataset at `location`: an .npz file, or a folder holding it or the IDX files."""
    location = source(spec, location)
    return _read_npz(location) if location.is_file() else _read_idx_folder(location)


def _download(spec, looked, path_name):
    """Download the dataset's missing files into the Keras cache; return (place, location),
    or raise DatasetNotFoundError listing every place looked and where to put the files."""
    folder = _keras_datasets() / spec.download_folder
    try:
        for name, sha256 in spec.downloads:
            if not (folder / name).is_file():  # a file already there is kept
                fetch(spec.base_url + name, folder / name, sha256)
    except DownloadError as error:
        looked = [*looked, f"download failed: {error}"]
        message = _not_found_message(spec, looked, folder, path_name)
        raise DatasetNotFoundError(message) from None
    return f"downloaded from {spec.base_url}", _keras_datasets() / spec.keras_cache


def _explicit(spec, path, path_name):
    """Return (path_name, location) for an explicitly given `path`, raising when it holds none."""
    location = Path(checked_path(path, path_name)).expanduser()
    reason = _why_missing(spec, location)
    if reason is not None:
        raise FileNotFoundError(
            f"Expected {path_name} to be an .npz file or a folder holding {spec.npz_name} "
            f"or the four IDX files. Received: {path_name}={os.fspath(path)!r} ({reason})"
        )
    return path_name, location


def _keras_datasets():
    """The Keras cache's datasets folder: $KERAS_HOME/datasets or ~/.keras/datasets."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets"


def _fallback_locations(spec):
    """Return (label, location or None, problem) for FASTNAIVE_DATA, the Keras cache and the
    system folders; `problem` says why a set FASTNAIVE_DATA names nothing usable, else None."""
    data = os.environ.get("FASTNAIVE_DATA")
    if not data:
        data_place = "FASTNAIVE_DATA", None, None
    else:
        problem = _data_problem(Path(data).expanduser())
        label, location = _data_place(spec, data)
        data_place = (
            (f"FASTNAIVE_DATA={data}", None, problem) if problem else (label, location, None)
        )
    cache = _keras_datasets() / spec.keras_cache
    system = [(f"{label} {folder}", Path(folder), None) for label, folder in spec.system_folders]
    return [data_place, (f"Keras cache {cache}", cache, None), *system]


def _data_place(spec, data):
    """Return (label, location) of `spec`'s dataset in the FASTNAIVE_DATA folder `data`."""
    folder = Path(data).expanduser()
    if not spec.data_subfolder or _is_file(folder / spec.npz_name):
        return f"FASTNAIVE_DATA={data}", folder
    subfolder = folder / spec.data_subfolder
    return f"FASTNAIVE_DATA={data} -> {subfolder}", subfolder


def _data_problem(location):
    """Return why FASTNAIVE_DATA's `location` can hold no dataset, or None when it may."""
    try:
        if not location.exists():
            return "no such file or directory"
        if location.is_file() or _holds_data(location, depth=1):
            return None
    except OSError as exc:
        return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
    return "a folder holding no .npz or IDX file, nor a folder of them"


def _holds_data(folder, depth):
    """Whether `folder` holds an .npz or IDX file, or (depth > 0) a folder that does."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and (entry.name.endswith(".npz") or _IDX_NAME.fullmatch(entry.name)):
                return True
            if depth and entry.is_dir() and _holds_data(entry.path, depth - 1):
                return True
    return False


def _fallback_state(spec, location):
    """Return why the searched place `location` holds no dataset source (it may be unset or
    unreadable: the search goes on), or None when it holds one. The Keras cache must hold
    every file: the download completes it."""
    if location is None:
        return "not set"
    try:
        reason = _why_missing(spec, location)
        if reason is None and location == _keras_datasets() / spec.keras_cache:
            reason = _incomplete(spec, location)
        return reason
    except OSError as exc:
        return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"


def _incomplete(spec, location):
    """Why the Keras cache's folder `location` lacks some of the dataset's IDX files, or None."""
    if location.is_file() or (location / spec.npz_name).is_file():
        return None
    missing = _missing_idx(_idx_files(location))
    return f"incomplete: no {', '.join(missing)}" if missing else None


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


def _not_found_message(spec, looked, folder, path_name):
    """Return the message listing every place searched for the dataset and how to provide it."""
    places = "\n".join(f"  - {place}" for place in looked)
    names = [name for name, _ in spec.downloads]
    if len(names) == 1:
        offline = f"download {spec.base_url}{names[0]} elsewhere and put it at {folder / names[0]}"
    else:
        offline = f"download {', '.join(names)} from {spec.base_url} elsewhere into {folder}/"
    return (
        f"{spec.name} not found. Looked in:\n{places}\n"
        f"To fix: pass {path_name} an .npz file or a folder holding {spec.npz_name} "
        "or the four IDX files; "
        f"or set FASTNAIVE_DATA to {_data_hint(spec)}; "
        f"or, offline, {offline}."
    )


def _data_hint(spec):
    """Return what FASTNAIVE_DATA must hold for `spec`, for the not-found message."""
    if spec.data_subfolder:
        return f"a folder holding {spec.npz_name} or a {spec.data_subfolder}/ folder of IDX files"
    return f"a folder holding {spec.npz_name} or the four IDX files"


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


def _missing_idx(found):
    """The IDX files (stem-kind) missing from `found`, the result of _idx_files."""
    return ["-".join(_IDX_NAMES[key]) for key in KEYS if key not in found]


def _read_idx_folder(folder):
    """Return the dataset held by the four IDX files in `folder`, validated."""
    files = _idx_files(folder)
    missing = _missing_idx(files)
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
