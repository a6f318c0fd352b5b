"""Benchmarks of the sweep service: ``python -m benchmarks NAME [--quick]``.

Each benchmark prints a table and writes JSON (machine, versions, every repeat, medians and
ratios) to ``benchmarks/results/NAME.json``. Run them from the repository root.
"""
