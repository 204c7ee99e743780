"""Balanced splitting of a run into subsets: the partition and the shared snapshot (durations.py) and the
plugin (plugin.py); the durations they balance by are ``records.py``'s."""
