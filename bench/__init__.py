"""Benchmarks behind ``make bench``: one module per benchmark, run by ``python -m bench.run``."""
