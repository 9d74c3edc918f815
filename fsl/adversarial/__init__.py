"""Adversarial attacks and their detection in feature space (DESIGN section B); plain tensor functions."""
