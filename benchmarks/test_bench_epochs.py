"""Per-epoch benchmarks on real MNIST (batch 128, SGD 1e-3), in one group "epoch mnist n=...":
fastnaive.fit for one epoch (its printing discarded) and the NumPy reference's epoch of
fastnaive.reference.sgd_step. --quick runs one round on a 2048-sample slice.

Run: python -m pytest benchmarks/test_bench_epochs.py -p no:cacheprovider [--quick]
"""

import pytest
import workloads

ROUNDS = 5


@pytest.fixture
def epoch(benchmark, mnist_train, quick):
    """run(epoch_function): benchmark epoch_function(model, x, y) on a fresh book model."""
    x, y = mnist_train
    benchmark.group = f"epoch mnist n={len(x)}"

    def run(epoch_function):
        benchmark.pedantic(
            epoch_function,
            (workloads.book_model(), x, y),
            rounds=1 if quick else ROUNDS,
            warmup_rounds=0 if quick else 1,
        )

    return run


def test_epoch_fit(epoch):
    epoch(workloads.fit_epoch)


def test_epoch_reference(epoch):
    epoch(workloads.reference_epoch)
