"""A toy setting of the adversarial tests: an untrained fsl model on uniform noise, labelled by its own
predictions (every sample correctly classified), and a stand-in geometry (feature norms) for the tests
about the detectors that do not read it."""
from __future__ import annotations

import torch

from fsl.adversarial.evaluate import DistanceFunctions
from fsl.models import create_model


def noise_setting(model_name: str, n: int, n_train: int):
    """``(model, x, y, f_tr, y_tr, geometry)``: ``n`` test and ``n_train`` training noise images, seeded."""
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    g = torch.Generator().manual_seed(1)
    x, x_tr = torch.rand(n, 1, 28, 28, generator=g), torch.rand(n_train, 1, 28, 28, generator=g)
    with torch.no_grad():
        y, f_tr = model(x).argmax(1), model.forward_features(x_tr)
        y_tr = model.forward_head(f_tr).argmax(1)
    geom = DistanceFunctions(lambda f: f.double().norm(dim=1), lambda f: 0.5 * f.double().norm(dim=1))
    return model, x, y, f_tr, y_tr, geom
