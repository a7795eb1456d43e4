"""Benchmarks of conveyor against bare baselines, measured side by side in one run.

`python -m bench` (or `make bench`) runs them all; `python -m bench queue` or
`python -m bench generation` runs one. Results and how to read them: docs/benchmarks.md.
"""
