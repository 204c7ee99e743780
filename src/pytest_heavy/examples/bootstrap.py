"""What runs inside an example's interpreter before its file, and what pytest prepares for it.

The example runs as ``python -c BOOTSTRAP <optional> <stacks fd> <code fd or -> <file> *args``. The
bootstrap must add close to nothing to ``python <file>``: it imports nothing the interpreter has not
loaded already (runpy, signal and pkgutil cost ~14 ms), and it does not compile the file either when
pytest did: the first ``compile()`` in a fresh interpreter builds the ``ast`` module's types (1-2 ms),
while unmarshalling the code object pytest compiled (with the child's optimization level) costs
microseconds. Both descriptors are anonymous files (memfd where there is one).
"""

from __future__ import annotations

import marshal
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

from .. import wire

EXIT_SKIP = 77  # the automake convention: "this test cannot run here"

# It registers faulthandler on STACK_SIGNAL (stacks go to a file, so stderr stays the example's own),
# then runs the code the way `python <file>` does: sys.argv[0], sys.path[0], a fresh __main__ module;
# its names stay out of the example's globals and its frames out of tracebacks. A missing optional
# module exits 77 with the reason last.
BOOTSTRAP = f"""\
import faulthandler, marshal, os, sys
def run(optional, stacks, compiled, path):
    faulthandler.register({int(wire.STACK_SIGNAL)}, file=int(stacks), all_threads=True)
    sys.argv[:] = sys.argv[4:]
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    main = type(sys)("__main__")
    main.__file__, main.__cached__, main.__builtins__ = path, None, __builtins__
    sys.modules["__main__"] = main
    try:
        if compiled == "-":
            with open(path, "rb") as source:
                code = compile(source.read(), path, "exec", dont_inherit=True)
        else:
            with open(int(compiled), "rb") as data:
                code = marshal.loads(data.read())
        exec(code, vars(main))
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        wanted = [m for m in optional.split(",") if missing and (m == missing or m.startswith(missing + "."))]
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        if wanted:
            sys.stderr.write("optional dependency " + wanted[0] + " not installed\\n")
        sys.exit({EXIT_SKIP} if wanted else 1)
run(*sys.argv[1:5])
"""


def compiled(path: Path, env: Mapping[str, str]) -> bytes | None:
    """The example's code object, marshalled, as the child would compile it; None where the child
    must compile it itself, so that what compiling says reaches the example's own stderr: a syntax
    error, or a warning (an invalid escape sequence, say)."""
    text = env.get("PYTHONOPTIMIZE", "")  # what the child's level comes from: it gets no -O
    level = int(text) if text.isdigit() else int(bool(text))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True, optimize=level)
    except (SyntaxError, ValueError, Warning, OSError):
        return None
    return marshal.dumps(code)


def anonymous_file(data: bytes = b"") -> int:
    """A descriptor of a file without a name, holding ``data``, positioned at its start: a memfd
    (no file system) where there is one, else an unlinked temporary file."""
    try:
        fd = os.memfd_create("pytest-heavy-example")
    except (AttributeError, OSError):
        fd, name = tempfile.mkstemp(prefix="pytest-heavy-example-")
        os.unlink(name)
    if data:
        with open(fd, "wb", closefd=False) as fh:
            fh.write(data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd
