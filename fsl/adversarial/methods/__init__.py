"""The attacks, one file each, registered with ``@fsl.adversarial.registry.register_attack``; a new
file in this folder is registered on import (docs/extending.md)."""
from fsl.plugins import import_modules

import_modules(__name__, first=("deepfool", "pgd", "cw", "adaptive"))
