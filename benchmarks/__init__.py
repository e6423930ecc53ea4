"""Benchmarks: run one with `python -m benchmarks.NAME`; they print figures, never pass/fail."""
