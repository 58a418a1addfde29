"""The README's better recipes, run through the command line on the real data sets."""

import re

import pytest

from fastnaive import cli

RECIPES = {
    "mnist": (
        [
            "train",
            "--hidden",
            "512",
            "--init",
            "glorot_uniform",
            "--optimizer",
            "adam",
            "--shuffle",
            "--seed",
            "0",
            "--epochs",
            "10",
        ],
        0.98,
    ),
    "fashion_mnist": (
        [
            "train",
            "--dataset",
            "fashion_mnist",
            "--hidden",
            "256,128",
            "--init",
            "glorot_uniform",
            "--optimizer",
            "adam",
            "--shuffle",
            "--seed",
            "0",
            "--validation-split",
            "0.1",
            "--epochs",
            "20",
        ],
        0.88,
    ),
}


@pytest.mark.mnist
@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, accuracy",
    [
        pytest.param(*RECIPES["mnist"], id="mnist", marks=pytest.mark.long_training),
        pytest.param(*RECIPES["fashion_mnist"], id="fashion_mnist"),
    ],
)
def test_recipe_reaches_its_accuracy(argv, accuracy, capsys):
    assert cli.main([*argv, "--verbose", "0"]) == 0
    reported = re.search(r"test accuracy: (\d\.\d+)", capsys.readouterr().out)
    assert float(reported.group(1)) >= accuracy
