"""The attacks, one file each, registered with ``@register_attack`` of
:mod:`fsl.adversarial.methods.registry`; a new file in this folder is registered on import, after
the built-ins (docs/extending.md)."""
from fsl.adversarial.methods.registry import ATTACKS, register_attack
from fsl.plugins import import_modules

import_modules(__name__, first=("registry", "deepfool", "pgd", "cw", "adaptive", "adaptive_detector"))

__all__ = ["ATTACKS", "register_attack"]
