"""The benchmark harness (``python benchmarks/run.py`` or ``python -m benchmarks.run``)."""
