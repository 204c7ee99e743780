"""The GPU's process-level state: the parent's CUDA context (guard.py) and NVIDIA MPS control (mps.py).

Empty on purpose: ``gpu.guard`` imports ``state``, which imports ``hardware``; importing the package
must not pull it in. Finding an MPS daemon, which the hardware probe needs, is ``mps_detect.py``
beside ``hardware.py``, below this package.
"""
