"""Balanced splitting of a run into subsets: the durations store (durations.py) and the plugin (plugin.py)."""
