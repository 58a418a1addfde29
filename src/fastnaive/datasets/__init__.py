"""Datasets for fastnaive, loaded without TensorFlow when a local copy exists."""

import importlib

from fastnaive.datasets import fashion_mnist, mnist
from fastnaive.datasets._resolve import DatasetNotFoundError, describe

__all__ = ["DatasetNotFoundError", "fashion_mnist", "locations", "mnist"]


def locations(name):
    """Return [(place, state)] for where load_data() of dataset `name` would look, in order."""
    return describe(importlib.import_module(f"fastnaive.datasets.{name}")._SPEC)
