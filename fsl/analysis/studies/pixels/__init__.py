"""From feature space back to pixels, one analysis per module (Yousefzadeh, arXiv 2202.04052,
sections 4-5; Pattichis & Pattichis, SSIAI 2024: signal spaces, SELU inversion, ideal inputs;
Jacobian preimages of latent vectors; docs/inversion.md). The math is :mod:`fsl.inversion` and
:mod:`fsl.spaces`.

Every study is a :class:`~fsl.analysis.studies.pixels.base.PixelStudy`: it shares the ``pixels``
settings (``configs/pixels/default.yaml``: which test samples, the inversion solver), one selection
of samples per context and one report section. Importing this package registers them (built-ins
in this order; a new module here is registered too).
"""
from fsl.plugins import import_modules

import_modules(__name__, first=("inversion", "morph", "preimage", "signal", "selu", "ideal"))
