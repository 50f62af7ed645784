"""Experiment configs, one file per experiment: `--config=configs/<name>.py` (or `--config=<name>` once installed)."""
