"""Experiments built on the library layers: sweeps, scaling-law fits, phase diagrams, plots."""
