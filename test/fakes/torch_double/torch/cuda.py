"""``torch.cuda`` as the guard and cleanup see it, with no GPU behind it.

``init()`` stands for the first call that makes real torch create a CUDA context (a tensor on the
GPU, ``torch.cuda.mem_get_info()``); afterwards ``is_initialized()`` is True, as in real torch, and
stays True: a context lives until the process exits.
"""

_initialized = False
empty_cache_calls = 0  # how often cleanup emptied the (absent) cache: tests read it


def init() -> None:
    global _initialized
    _initialized = True


def is_initialized() -> bool:
    return _initialized


def empty_cache() -> None:
    """Nothing cached: present because cleanup calls it once CUDA is initialized."""
    global empty_cache_calls
    empty_cache_calls += 1
