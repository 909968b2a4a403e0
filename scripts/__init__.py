"""Benchmarks, evaluations and report builders; run from the repository root as `python -m scripts.NAME`."""
