"""Projected gradient descent (Madry et al., arXiv 1706.06083), torchattacks' implementations:
``pgd`` (L-inf ball) and ``pgd_l2`` (L2 ball), both with a random start."""
from fsl.adversarial.registry import register_attack, torchattacks_attack

pgd = register_attack("pgd", defaults={"eps": 0.3, "alpha": None, "steps": 20, "random_start": True},
                      norm="Linf", doc="torchattacks PGD")(torchattacks_attack("PGD"))
pgd_l2 = register_attack("pgd_l2", defaults={"eps": 2.0, "alpha": None, "steps": 20, "random_start": True},
                         norm="L2", doc="torchattacks PGDL2")(torchattacks_attack("PGDL2"))
