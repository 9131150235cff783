"""Experiments: variants x seeds of training on one dataset, evaluated open and closed loop, one table.

config.py (what an experiment is, presets), steps.py (the table of CLI steps, resumable), summary.py (mean +/-
std over seeds, paired differences, plots). `python -m scripts.experiment` runs one; docs/experiments.md.
"""
