# example
try:
    import flash_attention_extra  # noqa: F401
except ImportError as e:
    raise ImportError("this example needs the [flash] extra: pip install mylib[flash]") from e
