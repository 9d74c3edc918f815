"""fsl, the feature-space lab: exact feature-space geometry, attacks and detectors, inversion,
FeatMap and FeatInv for image classifiers.

``fsl.wrap(model)`` makes any classifier whose logits are a final ``nn.Linear`` an fsl model;
``fsl.analyze(model, train, eval)`` runs the analyses of ``analyze.py`` on it (docs/quickstart.md).
Both are imported on first use, so ``import fsl.checks`` stays light.
"""
__version__ = "0.2.0"

__all__ = ["wrap", "analyze", "__version__"]


def __getattr__(name: str):
    if name == "wrap":
        from fsl.models.wrap import wrap

        return wrap
    if name == "analyze":
        from fsl.analysis.run import analyze_model

        return analyze_model
    raise AttributeError(f"module 'fsl' has no attribute {name!r}")
