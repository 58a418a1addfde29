"""pytest-benchmark set-up for fastnaive: the --quick option, MNIST, and a pause between benchmarks.

Run from the repository root (FASTNAIVE_DATA names a folder holding mnist.npz):

    python -m pytest benchmarks -p no:cacheprovider            # the figures
    python -m pytest benchmarks -p no:cacheprovider --quick    # only checks that all run

Each benchmark sets its group, so fastnaive, the NumPy reference and TensorFlow sit in one
table per kernel, per step and per epoch. --quick times a few rounds on a 2048-sample slice;
nothing here ever fails on timing.
"""

import pytest
import workloads

QUICK_SAMPLES = 2048
QUICK_SETTINGS = pytest.mark.benchmark(max_time=0.02, min_rounds=1, warmup=False)


def pytest_addoption(parser):
    parser.addoption(
        "--quick",
        action="store_true",
        help=f"few rounds, epochs on {QUICK_SAMPLES} samples: checks that the "
        "benchmarks run; the times mean little",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("quick"):
        for item in items:
            item.add_marker(QUICK_SETTINGS, append=False)


@pytest.fixture(scope="session")
def quick(request):
    return request.config.getoption("quick")


@pytest.fixture(scope="session")
def mnist_train(quick):
    """(x, y): MNIST's training images as float32 (n, 784) in [0, 1] and their uint8 labels."""
    return workloads.mnist_train(QUICK_SAMPLES if quick else workloads.N_TRAIN)


@pytest.fixture(autouse=True)
def idle_blas_pools(quick):
    """Start each benchmark once the previous one's BLAS thread pools are idle."""
    if not quick:
        workloads.settle()
