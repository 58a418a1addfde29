"""Shared fixtures: the dtypes, a seeded generator, the kernels' instruction set, the real
MNIST, and the book's TensorFlow code as the oracle. The plain helpers are in helpers.py.

Hypothesis draws the same examples in every run (profile "deterministic"), so that a run,
CI's among them, passes or fails on the code alone; FASTNAIVE_HYPOTHESIS_PROFILE=explore
draws new ones in each run, to look for failures. Either way a failure prints the blob
that replays it (@reproduce_failure)."""

import os

import numpy as np
import pytest
from helpers import DTYPES
from hypothesis import settings

import fastnaive
from fastnaive import _cpus, _sparse

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("FASTNAIVE_HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def uncapped_threads(monkeypatch):
    """Every test's calls on as many threads as OpenMP's limit asks, past the CPUs the process
    can keep busy (fastnaive._cpus.capped caps them at usable_cpus): the tests of 2 and 3
    threads run them on any machine, one CPU or a quota of one included. tests/test_cpus.py,
    which tests the cap, overrides this fixture."""
    monkeypatch.setattr(_cpus, "usable_cpus", lambda: 1 << 16)


@pytest.fixture(params=_sparse.INSTRUCTION_SETS)
def instruction_set(request):
    """Run the test on one version of the kernels compiled per instruction set (the sparse and
    the narrow products): the widest the CPU runs up to the param (on a CPU without AVX-512
    its param tests the AVX2 version again, rather than skipping)."""
    yield _sparse.select_instruction_set(request.param)
    _sparse.select_instruction_set()


@pytest.fixture(scope="session")
def mnist():
    """((train_images, train_labels), (test_images, test_labels)), preprocessed as in the book.

    The arrays are shared by every test, hence read-only.
    """
    try:
        data = fastnaive.datasets.mnist.load_data()
    except (OSError, ValueError) as exc:
        failure = (
            f"The MNIST tests need the real MNIST: set FASTNAIVE_DATA to a folder "
            f"holding mnist.npz. Loading it failed with:\n{exc}"
        )
    else:
        failure = None
    if failure:
        pytest.fail(failure, pytrace=False)
    (train_images, train_labels), (test_images, test_labels) = data
    train_images = train_images.reshape((60000, 28 * 28)).astype("float32") / 255
    test_images = test_images.reshape((10000, 28 * 28)).astype("float32") / 255
    for array in (train_images, train_labels, test_images, test_labels):
        array.setflags(write=False)
    return (train_images, train_labels), (test_images, test_labels)


@pytest.fixture(scope="session")
def book():
    """The module tf_book: copy_of(fastnaive_model), loss_and_gradients, one_training_step.

    Imported here, so that only the tests using it import TensorFlow.
    """
    import tf_book

    return tf_book
