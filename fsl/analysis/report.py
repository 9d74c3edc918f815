"""Number formatting shared by the analyses' report sections."""
from __future__ import annotations

import math


def fmt(v, spec: str | None = None) -> str:
    """``n/a`` for None/NaN/inf, thousands for |v| >= 100, else 4 significant digits (or ``spec``)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v) and math.isnan(v)):
        return "n/a"
    if spec is not None:
        return format(v, spec) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"
    if isinstance(v, float) and math.isfinite(v) and abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
