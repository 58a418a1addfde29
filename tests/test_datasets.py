"""Tests for fastnaive.datasets: IDX reading, MNIST source search order and validation."""

import gzip
import os
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    IDX_NAMES,
    assert_loaded,
    deflated,
    idx_bytes,
    npy_bytes,
    npy_header,
    synthetic,
    write_gzip,
    write_idx_folder,
    write_npz,
    write_zip,
)

import fastnaive.datasets
from fastnaive.datasets import DatasetNotFoundError, mnist
from fastnaive.datasets._idx import read_idx

REAL_DATA = os.environ.get("FASTNAIVE_DATA")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """Hide the real FASTNAIVE_DATA, Keras cache and TensorFlow from every test."""
    monkeypatch.delenv("FASTNAIVE_DATA", raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setitem(sys.modules, "tensorflow", None)


def fake_tensorflow(monkeypatch, load_data):
    """Install a stand-in `tensorflow` whose keras.datasets.mnist.load_data is `load_data`."""
    mnist_module = types.SimpleNamespace(load_data=load_data)
    keras = types.SimpleNamespace(datasets=types.SimpleNamespace(mnist=mnist_module))
    monkeypatch.setitem(sys.modules, "tensorflow", types.SimpleNamespace(keras=keras))


# IDX reader


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    start = 0 if dtype == "u1" else -5
    array = np.arange(start, start + 24).reshape(2, 3, 4).astype(dtype)
    raw = idx_bytes(array)
    file = tmp_path / "data-idx"
    file.write_bytes(gzip.compress(raw) if gz else raw)
    result = read_idx(file)
    assert result.dtype == array.dtype.newbyteorder("=")
    assert result.dtype.isnative
    assert result.shape == array.shape
    np.testing.assert_array_equal(result, array)


def test_read_idx_detects_gzip_by_magic_not_suffix(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    plain_named_gz = tmp_path / "labels.gz"
    plain_named_gz.write_bytes(idx_bytes(array))
    gzip_without_suffix = tmp_path / "labels"
    gzip_without_suffix.write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)
    np.testing.assert_array_equal(read_idx(gzip_without_suffix), array)


BAD_MAGICS = [b"", b"\0\0", b"\1\0\x08\1", b"\0\1\x08\1", b"\0\0\x07\1", b"\0\0\x08\0"]


@pytest.mark.parametrize("header", BAD_MAGICS)
def test_read_idx_rejects_bad_magic(tmp_path, header):
    file = tmp_path / "bad-idx1-ubyte"
    file.write_bytes(header + struct.pack(">I", 0))
    with pytest.raises(ValueError, match="magic number") as info:
        read_idx(file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("extra", [-1, 1])
def test_read_idx_rejects_wrong_data_length(tmp_path, extra):
    raw = idx_bytes(np.zeros((3, 4), np.uint8))
    file = tmp_path / "bad-idx2-ubyte"
    file.write_bytes(raw[:extra] if extra < 0 else raw + b"\x00")
    pattern = f"Expected 12 data bytes .*Received: {12 + extra} bytes"
    with pytest.raises(ValueError, match=pattern) as info:
        read_idx(file)
    assert str(file) in str(info.value)


def test_read_idx_rejects_truncated_header(tmp_path):
    file = tmp_path / "bad-idx3-ubyte"
    file.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(ValueError, match="Expected 16 header bytes for 3 dimensions") as info:
        read_idx(file)
    assert str(file) in str(info.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    file = tmp_path / "bad-idx1-ubyte.gz"
    file.write_bytes(gzip.compress(idx_bytes(np.arange(100, dtype=np.uint8)))[:-10])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(file)
    assert str(file) in str(info.value)


# Sources


def test_load_npz_file(tmp_path):
    data = synthetic()
    assert_loaded(mnist.load_data(write_npz(tmp_path / "any-name.npz", data)), data)


def test_load_folder_with_mnist_npz_given_as_str(tmp_path):
    data = synthetic()
    write_npz(tmp_path / "mnist.npz", data)
    assert_loaded(mnist.load_data(str(tmp_path)), data)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sep", ["-", "."])
def test_load_folder_with_idx_files(tmp_path, gz, sep):
    data = synthetic()
    assert_loaded(mnist.load_data(write_idx_folder(tmp_path, data, gz=gz, sep=sep)), data)


def test_folder_prefers_mnist_npz_over_idx_files(tmp_path):
    npz_data, idx_data = synthetic(1), synthetic(2)
    write_npz(tmp_path / "mnist.npz", npz_data)
    write_idx_folder(tmp_path, idx_data)
    assert_loaded(mnist.load_data(tmp_path), npz_data)


def test_npz_integer_dtypes_that_fit_are_converted(tmp_path):
    data = synthetic()
    wide = {key: array.astype(np.int64) for key, array in data.items()}
    assert_loaded(mnist.load_data(write_npz(tmp_path / "wide.npz", wide)), data)


# Search order


def test_path_beats_fastnaive_data_and_keras_cache(tmp_path, monkeypatch):
    given, env, cache = synthetic(1), synthetic(2), synthetic(3)
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_idx_folder(tmp_path / "env", env)))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", cache)
    assert_loaded(mnist.load_data(write_npz(tmp_path / "given.npz", given)), given)


def test_fastnaive_data_beats_keras_cache(tmp_path, monkeypatch):
    env, cache = synthetic(2), synthetic(3)
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_npz(tmp_path / "env" / "mnist.npz", env).parent))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", cache)
    assert_loaded(mnist.load_data(), env)


def test_fastnaive_data_may_name_an_npz_file(tmp_path, monkeypatch):
    env = synthetic(2)
    monkeypatch.setenv("FASTNAIVE_DATA", str(write_npz(tmp_path / "data.npz", env)))
    assert_loaded(mnist.load_data(), env)


@pytest.mark.parametrize("value", ["missing-folder", "empty-folder", ""])
def test_unusable_fastnaive_data_falls_through_to_keras_home_cache(tmp_path, monkeypatch, value):
    (tmp_path / "empty-folder").mkdir()
    monkeypatch.setenv("FASTNAIVE_DATA", str(tmp_path / value) if value else "")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cache = synthetic(3)
    write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", cache)
    assert_loaded(mnist.load_data(), cache)


def test_keras_cache_defaults_to_home(tmp_path):
    cache = synthetic(3)
    write_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", cache)
    assert_loaded(mnist.load_data(), cache)


def test_tensorflow_download_is_the_last_resort(monkeypatch):
    data = synthetic(4)
    train, test = (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])
    fake_tensorflow(monkeypatch, lambda: (train, test))
    assert_loaded(mnist.load_data(), data)


def test_corrupt_fastnaive_data_raises_instead_of_falling_through(tmp_path, monkeypatch):
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setenv("FASTNAIVE_DATA", str(tmp_path / "env"))
    write_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", synthetic())
    with pytest.raises(ValueError, match="Expected an .npz archive") as info:
        mnist.load_data()
    assert str(tmp_path / "env" / "mnist.npz") in str(info.value)


def test_corrupt_keras_cache_raises_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    data = synthetic()
    data["y_test"] = data["y_test"][:3]
    cache = write_npz(tmp_path / "keras" / "datasets" / "mnist.npz", data)
    with pytest.raises(ValueError, match=r"Expected y_test of shape \(4,\)") as info:
        mnist.load_data()
    assert str(cache) in str(info.value)


def test_error_lists_every_place_when_all_fail(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNAIVE_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(DatasetNotFoundError) as info:
        mnist.load_data()
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "path=: not given" in message
    assert f"FASTNAIVE_DATA={tmp_path / 'nowhere'}: no such file or directory" in message
    cache = tmp_path / "keras" / "datasets" / "mnist.npz"
    assert f"Keras cache {cache}: no such file or directory" in message
    assert "TensorFlow not installed" in message
    assert 'pip install "fastnaive[tf]"' in message
    assert "set FASTNAIVE_DATA" in message


def test_error_reports_unset_variable_and_failed_download(tmp_path, monkeypatch):
    def offline():
        raise OSError("network unreachable")

    fake_tensorflow(monkeypatch, offline)
    with pytest.raises(DatasetNotFoundError) as info:
        mnist.load_data()
    message = str(info.value)
    assert "FASTNAIVE_DATA: not set" in message
    assert f"Keras cache {tmp_path / 'home' / '.keras' / 'datasets' / 'mnist.npz'}" in message
    assert "download failed: OSError('network unreachable')" in message


# Explicit path errors


def test_missing_explicit_path_raises_naming_it(tmp_path):
    missing = tmp_path / "nope"
    write_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", synthetic())
    with pytest.raises(FileNotFoundError, match="no such file or directory") as info:
        mnist.load_data(missing)
    assert f"path={str(missing)!r}" in str(info.value)


def test_explicit_folder_without_sources_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither mnist.npz nor IDX files") as info:
        mnist.load_data(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_explicit_path_of_wrong_type_raises():
    with pytest.raises(TypeError, match="Received: path=42"):
        mnist.load_data(42)


def test_incomplete_idx_folder_raises(tmp_path):
    write_idx_folder(tmp_path, synthetic())
    (tmp_path / IDX_NAMES["y_test"]).unlink()
    with pytest.raises(ValueError, match="no file for t10k-labels-idx1-ubyte") as info:
        mnist.load_data(tmp_path)
    assert str(tmp_path) in str(info.value)


# Corrupt IDX sources


def test_idx_folder_with_bad_magic_names_the_file(tmp_path):
    write_idx_folder(tmp_path, synthetic())
    bad = tmp_path / IDX_NAMES["x_train"]
    bad.write_bytes(b"\x08\x03" + bad.read_bytes()[2:])
    with pytest.raises(ValueError, match="magic number") as info:
        mnist.load_data(tmp_path)
    assert str(bad) in str(info.value)


def test_idx_folder_with_truncated_file_names_the_file(tmp_path):
    write_idx_folder(tmp_path, synthetic(), gz=True)
    bad = tmp_path / (IDX_NAMES["x_test"] + ".gz")
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:-5]))
    with pytest.raises(ValueError, match=f"Expected {4 * 28 * 28} data bytes") as info:
        mnist.load_data(tmp_path)
    assert str(bad) in str(info.value)


def test_idx_folder_with_wrong_image_dims_names_the_file(tmp_path):
    data = synthetic()
    write_idx_folder(tmp_path, data)
    bad = tmp_path / IDX_NAMES["x_train"]
    bad.write_bytes(idx_bytes(data["x_train"].reshape(6, 784)))
    pattern = r"Expected x_train of shape \(n, 28, 28\)\. Received: x_train.shape=\(6, 784\) in "
    with pytest.raises(ValueError, match=pattern) as info:
        mnist.load_data(tmp_path)
    assert str(bad) in str(info.value)


# Invalid npz sources


INVALID_NPZ = {
    "missing-key": ("y_test", None, "Expected keys x_train, y_train, x_test, y_test"),
    "float-images": ("x_train", lambda a: a.astype(np.float32), "Received: x_train.dtype=float32"),
    "negative-labels": (
        "y_train",
        lambda a: a.astype(np.int16) - 1,
        r"Received: y_train.dtype=int16 with values in \[-1,",
    ),
    "label-out-of-range": (
        "y_train",
        lambda a: a + 10,
        r"Expected y_train values in \[0, 10\)\. Received: max\(y_train\)=",
    ),
    "flat-images": ("x_test", lambda a: a.reshape(4, 784), r"Received: x_test.shape=\(4, 784\)"),
    "2d-labels": ("y_train", lambda a: a[:, None], r"Received: y_train.shape=\(6, 1\)"),
    "pickled": (
        "x_test",
        lambda a: np.array([1, "a"], dtype=object),
        "Expected x_test to be a plain numeric array",
    ),
}


@pytest.mark.parametrize("case", INVALID_NPZ)
def test_invalid_npz_raises_naming_file_and_key(tmp_path, case):
    key, change, pattern = INVALID_NPZ[case]
    data = synthetic()
    array = data.pop(key)
    if change is not None:
        data[key] = change(array)
    file = write_npz(tmp_path / "mnist.npz", data)
    with pytest.raises(ValueError, match=pattern) as info:
        mnist.load_data(file)
    assert str(file) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not an archive", b"PK\x03\x04 truncated"])
def test_unreadable_npz_raises_naming_it(tmp_path, content):
    file = tmp_path / "mnist.npz"
    file.write_bytes(content)
    with pytest.raises(ValueError, match="Expected an .npz archive") as info:
        mnist.load_data(file)
    assert str(file) in str(info.value)


def test_single_npy_array_is_rejected(tmp_path):
    file = tmp_path / "mnist.npy"
    np.save(file, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="single .npy array"):
        mnist.load_data(file)


# Import


def test_import_does_not_import_tensorflow():
    src = Path(fastnaive.datasets.__file__).resolve().parents[2]
    pythonpath = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    code = "import fastnaive.datasets.mnist, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


# Real data


@pytest.mark.mnist
def test_real_mnist(monkeypatch):
    if not REAL_DATA:
        pytest.fail(
            "Set FASTNAIVE_DATA to a folder holding the real mnist.npz "
            "(e.g. FASTNAIVE_DATA=/work/shared/data)."
        )
    monkeypatch.setenv("FASTNAIVE_DATA", REAL_DATA)
    try:
        (x_train, y_train), (x_test, y_test) = mnist.load_data()
    except DatasetNotFoundError as exc:
        pytest.fail(f"FASTNAIVE_DATA={REAL_DATA} must hold the real mnist.npz or IDX files.\n{exc}")
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_train, minlength=10).tolist() == counts
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert x_train.mean() == pytest.approx(33.3184, abs=1e-4)


# Hostile files (docs/robustness.md, class 7): refused from their headers, unread


def test_read_idx_refuses_a_gzip_stream_longer_than_its_header(tmp_path):
    file = write_gzip(
        tmp_path / "bad-idx2-ubyte.gz", deflated(idx_bytes(np.zeros((3, 4), np.uint8)), 2**26)
    )
    with pytest.raises(
        ValueError, match="Expected 12 data bytes .*Received: more than 12 bytes"
    ) as info:
        read_idx(file)
    assert str(file) in str(info.value)


def test_read_idx_refuses_a_gzip_header_declaring_more_than_its_file_can_hold(tmp_path):
    header = b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 28, 28)
    file = write_gzip(tmp_path / "bad-idx3-ubyte.gz", deflated(header, 1000))
    with pytest.raises(ValueError, match=r"at most 100 times its \d+ bytes") as info:
        read_idx(file)
    assert "1683627180032 data bytes" in str(info.value) and str(file) in str(info.value)


def test_read_idx_refuses_a_plain_file_shorter_than_its_header_without_reading_it(tmp_path):
    file = tmp_path / "bad-idx3-ubyte"
    file.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match="Expected 1683627180032 data bytes .*Received: 100 bytes"):
        read_idx(file)


HOSTILE_NPZ = {
    "header-declaring-(2**40, 28, 28)": (
        {
            "x_train.npy": npy_header((2**40, 28, 28), "|u1"),
            "y_train.npy": npy_header((2**40,), "|u1"),
        },
        r"declare \d+ bytes, more than 100 times the file's size",
    ),
    "member-inflating-to-64-MiB": (
        {
            "x_train.npy": deflated(npy_header((85598, 28, 28), "|u1"), 2**26),
            "y_train.npy": deflated(npy_header((85598,), "|u1"), 85598),
        },
        r"declare \d+ bytes, more than 100 times the file's size",
    ),
    "member-inflating-past-its-header": (
        {"y_test.npy": deflated(npy_bytes(synthetic()["y_test"]), 2**26)},
        "holding more data than its shape",
    ),
    "member-not-npy": ({"readme.txt": b"hello"}, "a member 'readme.txt' that is not an .npy array"),
    "float-images-by-header": (
        {"x_test.npy": npy_header((4, 28, 28), "<f8")},
        r"Received: x_test.dtype=float64",
    ),
    "shapes-disagree-by-header": (
        {"y_test.npy": npy_header((2**40,), "|u1")},
        r"Expected y_test of shape \(4,\) to match x_test",
    ),
}


@pytest.mark.parametrize("members, pattern", HOSTILE_NPZ.values(), ids=HOSTILE_NPZ.keys())
def test_a_hostile_npz_is_refused_naming_it(tmp_path, members, pattern):
    good = {f"{key}.npy": npy_bytes(array) for key, array in synthetic().items()}
    file = write_zip(tmp_path / "mnist.npz", {**good, **members})
    with pytest.raises(ValueError, match=pattern) as info:
        mnist.load_data(file)
    assert str(file) in str(info.value)


def test_an_unreadable_fastnaive_data_is_reported_and_the_search_goes_on(tmp_path, monkeypatch):
    unreadable = str(tmp_path / ("x" * 300))  # a name longer than any file system allows
    monkeypatch.setenv("FASTNAIVE_DATA", unreadable)
    data = synthetic()
    write_npz(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", data)
    assert_loaded(mnist.load_data(), data)
    places = dict(fastnaive.datasets.locations("mnist"))
    assert places[f"FASTNAIVE_DATA={unreadable}"].endswith(
        ("(OSError: File name too long)", "no such file or directory")
    )
