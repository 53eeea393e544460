"""Benchmarks for Tidings, each next to a peer run in the same process invocation.

Run with ``python -m bench`` (``make bench``); ``python -m bench --help`` lists the sections,
profiles and sizes. Results are printed as a table and written to ``bench/results/``.
"""
