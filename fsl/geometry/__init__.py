"""Exact, batched, certified feature-space geometry (DESIGN A1-A4); pure torch, no Lightning."""
from .flip import FlipResult, flip_margins

__all__ = ["FlipResult", "flip_margins"]
