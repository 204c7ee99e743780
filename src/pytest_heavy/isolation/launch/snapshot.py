"""The snapshot: a template forked from pytest in the middle of collection, without a second import.

The template forked at session start (``template.py``) knows nothing of what test modules import;
importing torch there again costs about 1.3 s of CPU while the parent imports it too. So the moment
a test module's import of a package from outside the project (``preload.Spotter``) has finished, and
pytest is still safe to fork (no OpenMP pool, no CUDA, no Python thread started since the session
began: ``threads.py``), a new template is forked from pytest right there and the old one retired.
The new one holds the package already, at the cost of one fork.

It is forked with the parent's collection on its stack and never returns into it. Before it serves,
it forgets what collection left behind (``forget_collection``), so a child forked from it starts as
one from the session-start template did: the project's modules imported since the session started
(the test module half way through its import, its conftests, its helpers) leave ``sys.modules``, with
their import locks, and are imported again by the child that collects them; the directories
collection put on ``sys.path``, the warnings filters of the collection's ``catch_warnings`` and the
parent's global capture are undone. What a module imported before its outside package changed
elsewhere in the process stays, as it stays in pytest itself for the tests that follow it.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

IMPORTLIB_FILE = "<frozen importlib._bootstrap>"


@dataclass(frozen=True)
class Project:
    """What counts as the project's code: files under the rootdir, except the interpreter's own
    directories and the user's site-packages (a virtual environment inside the project holds
    packages from outside it)."""

    roots: tuple[str, ...]
    outside: tuple[str, ...]

    @classmethod
    def at(cls, rootpath: Path) -> Project:
        roots = {str(rootpath), os.path.realpath(rootpath)}
        places = [sys.prefix, sys.exec_prefix, sys.base_prefix, site.getusersitepackages(),
                  *sysconfig.get_paths().values()]  # a project in $HOME holds the user's site-packages
        prefixes = {*places, *map(os.path.realpath, places)}
        return cls(tuple(root.rstrip(os.sep) + os.sep for root in roots),
                   tuple(prefix.rstrip(os.sep) + os.sep for prefix in prefixes))

    def owns(self, path: str) -> bool:
        """Whether the file or directory ``path`` is the project's (no symlink resolved: cheap enough
        for every module torch imports; the rootdir is matched as given and resolved)."""
        path = os.path.abspath(path)
        return path.startswith(self.roots) and not path.startswith(self.outside)

    def owns_module(self, module: ModuleType) -> bool:
        """By its file, or a package's directories (a namespace package has no file); a module-like
        object with neither (torch's ``torch.classes``) is not the project's."""
        try:
            places = [getattr(module, "__file__", None), *list(getattr(module, "__path__", None) or ())]
        except Exception:  # a lazy module, an object whose __path__ is no list of directories
            return False
        return any(isinstance(place, str) and self.owns(place) for place in places)


@dataclass(frozen=True)
class SessionStart:
    """What the process held when the session started, before collection imported anything."""

    project: Project
    modules: frozenset[str]
    path: tuple[str, ...]
    filters: tuple[Any, ...]
    show: tuple[Any, Any]  # how warnings are shown: catch_warnings(record=True) replaces both

    @classmethod
    def now(cls, rootpath: Path) -> SessionStart:
        return cls(Project.at(rootpath), frozenset(sys.modules), tuple(sys.path), tuple(warnings.filters),
                   (warnings.showwarning, getattr(warnings, "_showwarnmsg_impl", None)))


def importing_outside(project: Project) -> bool:
    """Whether an import of anything but the project's code is in progress on this thread's stack:
    its module lock is held and its module half built, which a fork must not freeze into a template
    (a child's thread importing it would wait for that lock forever). The project's own modules in
    progress (the test module itself) are dropped from the snapshot, locks and all."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_find_and_load" and code.co_filename == IMPORTLIB_FILE:
            module = sys.modules.get(frame.f_locals.get("name", ""))
            if module is None or not project.owns_module(module):
                return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def forget_collection(start: SessionStart, config: pytest.Config) -> None:
    """In the snapshot, before it serves: undo what collection did in the copy of pytest it was
    forked from (see the module's docstring)."""
    capman = config.pluginmanager.get_plugin("capturemanager")
    if capman is not None:  # its streams and files are the parent's: our output goes to /dev/null
        capman.suspend_global_capture(in_=True)
    locks: dict[str, Any] = getattr(sys.modules["importlib._bootstrap"], "_module_locks", {})
    for name, module in list(sys.modules.items()):
        if name not in start.modules and module is not None and start.project.owns_module(module):
            del sys.modules[name]
            locks.pop(name, None)  # the test module's, held by the stack we never return to
    sys.path[:] = [p for p in sys.path if p in start.path or not start.project.owns(p or os.curdir)]
    warnings.filters[:] = start.filters  # type: ignore[index]
    warnings.showwarning, impl = start.show
    if impl is not None:
        warnings._showwarnmsg_impl = impl  # type: ignore[attr-defined]
    warnings._filters_mutated()  # type: ignore[attr-defined]
