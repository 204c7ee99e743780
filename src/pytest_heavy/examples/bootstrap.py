"""What runs inside an example's interpreter before its file, and what pytest prepares for it.

The example runs as ``python -c BOOTSTRAP <optional> <skip rules> <stacks fd> <code fd or -> <file>
*args``. The bootstrap must add close to nothing to ``python <file>``: it imports nothing the
interpreter has not loaded already (runpy, signal and pkgutil cost ~14 ms), and it does not compile the
file either when pytest did: the first ``compile()`` in a fresh interpreter builds the ``ast`` module's
types (1-2 ms), while unmarshalling the code object pytest compiled (with the child's optimization
level) costs microseconds. Both descriptors are anonymous files (memfd where there is one).
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
# its names stay out of the example's globals and its frames out of tracebacks. An exception that
# means "skip" exits 77 with the reason last: an ImportError whose chain (``raise ImportError(...) from
# e`` sets __cause__, raising inside ``except`` sets __context__) holds a ModuleNotFoundError for an
# optional module, or an exception a heavy_examples_skip_on line names ("Class" or "Class: regex";
# any class in its MRO counts, so ImportError covers ModuleNotFoundError).
BOOTSTRAP = f"""\
import faulthandler, marshal, os, sys
def skip_reason(exc, optional, rules):
    seen, chain = exc, set()
    while isinstance(exc, ImportError) and seen is not None and id(seen) not in chain:
        chain.add(id(seen))
        missing = seen.name if isinstance(seen, ModuleNotFoundError) else None
        for m in optional.split(","):
            if missing and (m == missing or m.startswith(missing + ".")):
                return "optional dependency " + m + " not installed"
        seen = seen.__cause__ or seen.__context__
    names = {{c.__name__ for c in type(exc).__mro__}}
    for rule in filter(None, rules.split("\\n")):
        name, _, pattern = rule.partition(": ")
        if name in names:
            if pattern:
                import re
                if not re.search(pattern, str(exc)):
                    continue
            return type(exc).__name__ + ": " + str(exc) + " (heavy_examples_skip_on: " + rule + ")"
    return None
def run(optional, rules, stacks, compiled, path):
    faulthandler.register({int(wire.STACK_SIGNAL)}, file=int(stacks), all_threads=True)
    sys.argv[:] = sys.argv[5:]
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
        reason = skip_reason(exc, optional, rules)
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        if reason:
            sys.stderr.write(" ".join(reason.split()) + "\\n")
        sys.exit({EXIT_SKIP} if reason else 1)
run(*sys.argv[1:6])
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
