"""The GPU's process-level state: the parent's CUDA context (guard.py) and NVIDIA MPS (mps.py).

Empty on purpose: ``hardware`` imports ``gpu.mps`` for its probe, and ``gpu.guard`` imports ``state``,
which imports ``hardware``; importing the package must not pull in both.
"""
