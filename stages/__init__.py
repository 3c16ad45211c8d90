"""Stages of the bundled Darcy-flow surrogate example (see experiment.py)."""
