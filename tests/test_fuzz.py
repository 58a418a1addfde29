"""A short run of the API fuzzer (tests/fuzz_api.py); CI also runs 100,000 calls."""

import pytest
from fuzz_api import STRATEGIES, fuzz, fuzz_mpi


@pytest.mark.parametrize("seed", [1, 2])
def test_generated_calls_raise_only_documented_exceptions(seed):
    counts, failures = fuzz(calls=2000, seed=seed)
    assert failures == []
    assert counts["returned"] > 100 and counts["ValueError"] > 100 and counts["TypeError"] > 100
    # Every strategy ran, and interrupts did interrupt.
    assert all(counts[f"[{name}]"] > 0 for name in STRATEGIES if name != "umask")
    assert counts["interrupted"] > 10


def test_generated_failures_end_every_mpi_job():
    """Jobs of 2 ranks with a random failure at a random phase (class 1): each must end."""
    counts, failures = fuzz_mpi(jobs=4, seed=3)
    assert failures == []
    assert (
        sum(
            value
            for key, value in counts.items()
            if key.startswith("mpi ") and key != "mpi seconds"
        )
        == 4
    )
