"""The analyses, one module each; importing this package registers them in
:data:`fsl.analysis.base.ANALYSES` (built-ins first; a new file here is registered too, see
docs/extending.md)."""
from fsl.plugins import import_modules

import_modules(__name__, first=("geometry", "pixel_hull", "adversarial", "spaces", "pixels", "featinv", "featmap"))
