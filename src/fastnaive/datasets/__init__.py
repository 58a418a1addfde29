"""Datasets for fastnaive, loaded without TensorFlow when a local copy exists."""

from fastnaive.datasets import mnist
from fastnaive.datasets._resolve import DatasetNotFoundError

__all__ = ["DatasetNotFoundError", "mnist"]
