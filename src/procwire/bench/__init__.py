"""Measurements shared by ``procwire bench`` and the scripts in ``benchmarks/``.

A *case* is one workload with fixed parameters (``queues.py`` defines the
queue cases). The harness runs every case in a fresh interpreter, because
what a parent allocated before forking changes large-message results, and
interleaves the repeats across the whole suite so that a noisy minute of this
2-vCPU machine does not land on one implementation only. It reports medians.
"""
