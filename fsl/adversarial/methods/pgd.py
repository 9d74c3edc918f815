"""Projected gradient descent (Madry et al., arXiv 1706.06083), torchattacks' implementations:
``pgd`` (L-inf ball) and ``pgd_l2`` (L2 ball), both with a random start; ``apgd`` and ``apgd_l2``: Auto-PGD (Croce & Hein, arXiv 2003.01690)."""
from fsl.adversarial.methods.registry import register_attack, torchattacks_attack

pgd = register_attack("pgd", defaults={"eps": 0.3, "alpha": None, "steps": 20, "random_start": True},
                      norm="Linf", doc="torchattacks PGD")(torchattacks_attack("PGD"))
pgd_l2 = register_attack("pgd_l2", defaults={"eps": 2.0, "alpha": None, "steps": 20, "random_start": True},
                         norm="L2", doc="torchattacks PGDL2")(torchattacks_attack("PGDL2"))


def _apgd(norm: str):
    base = torchattacks_attack("APGD")

    def run(model, images, labels, **params):
        return base(model, images, labels, norm=norm, **params)

    run.__name__ = f"torchattacks.APGD[{norm}]"
    return run


# Auto-PGD (Croce & Hein, arXiv 2003.01690), torchattacks' implementation: step size adapted per sample,
# and with loss="dlr" the difference-of-logits ratio, which is invariant to the logits' scale; a model
# whose PGD-CE robustness comes from saturated softmax (gradient masking) loses it here.
apgd = register_attack("apgd", defaults={"eps": 0.1, "steps": 50, "n_restarts": 1, "loss": "dlr", "seed": 0},
                       norm="Linf", doc="torchattacks APGD (L-inf), DLR loss by default")(_apgd("Linf"))
apgd_l2 = register_attack("apgd_l2", defaults={"eps": 2.0, "steps": 50, "n_restarts": 1, "loss": "dlr", "seed": 0},
                          norm="L2", doc="torchattacks APGD (L2), DLR loss by default")(_apgd("L2"))
