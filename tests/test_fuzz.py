"""A short run of the API fuzzer (tests/fuzz_api.py); CI also runs 100,000 calls."""

import pytest
from fuzz_api import fuzz


@pytest.mark.parametrize("seed", [1, 2])
def test_generated_calls_raise_only_documented_exceptions(seed):
    counts, failures = fuzz(calls=2000, seed=seed)
    assert failures == []
    assert counts["returned"] > 100 and counts["ValueError"] > 100 and counts["TypeError"] > 100
