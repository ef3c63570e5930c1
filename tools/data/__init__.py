"""Data sets on disk: the built-in demo data, a contest-shaped test folder from a run's held-out pairs."""
