"""Benchmarks of the bridge, run against the sandboxes on real local ports.

``python -m bench`` runs every benchmark module in this package (any module not starting
with ``_`` that has a ``main(argv)``); ``python -m bench.<name>`` runs one. Each writes
its own section of ``docs/performance.md`` (``bench/_report.py``) and leaves the others.
Benchmarks are not tests: they measure, and fail only when the bridge delivers wrongly.
"""
