"""Benchmarks and their PyTorch twins, kept apart from the evaluation tools.

bench.py times our networks against PyTorch twins of the same layers and weights (torch_twins.py);
bench_test.py times test.py's generation. PyTorch is a dev extra: nothing else imports this folder.
"""
