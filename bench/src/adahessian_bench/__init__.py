"""Benchmark harness for the ``adahessian`` optimizer.

A separate package: the library never imports it.
Entry point: ``adahessian-bench`` (see ``cli.py``).
"""

__version__ = "0.2.0"  # bench/pyproject.toml reads it; always the library's version
