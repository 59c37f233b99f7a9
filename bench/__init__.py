"""Benchmarks (not timed tests): run them as ``python -m bench.<name>``; each prints a table."""
