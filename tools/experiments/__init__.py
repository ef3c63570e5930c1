"""Experiments on held-out halves: tune test.py's settings, compare trained runs."""
