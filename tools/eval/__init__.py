"""Scoring results: evaluate a results folder, train the stand-in judge, pick the expert-vote images, the report."""
