"""A test double for ``torch``: only what pytest-heavy's context checks read (see pytest_heavy.gpu.guard).

Put ``test/fakes/torch_double`` first on ``sys.path`` in a pytester session; a test that calls
``torch.cuda.init()`` then leaves the process looking like one that holds a CUDA context.
"""

from . import cuda

__version__ = "0.0+double"
__all__ = ["cuda"]
