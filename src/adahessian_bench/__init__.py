"""Benchmark harness for the ``adahessian`` optimizer.

A separate package: the library never imports it.
Entry point: ``adahessian-bench`` (see ``cli.py``).
"""

__version__ = "0.1.0"
