"""Benchmarks: one script per measured question, each `python -m benchmarks.NAME [--quick]`."""
