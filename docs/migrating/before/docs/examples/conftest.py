"""The hand-written examples runner: every script runs as `python <file>`; one that cannot import is
skipped (the project calls whatever it imports optional)."""

import shutil
import subprocess
import sys

import pytest


def has_gpu():
    smi = shutil.which("nvidia-smi")
    return smi is not None and "GPU " in subprocess.run([smi, "-L"], capture_output=True, text=True).stdout


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name != "conftest.py":
        return ExampleFile.from_parent(parent, path=file_path)


class ExampleFile(pytest.File):
    def collect(self):
        yield ExampleItem.from_parent(self, name=self.path.name)


class ExampleItem(pytest.Item):
    def runtest(self):
        checks = not self.config.getoption("--skip-resource-checks", False)
        if checks and "require_gpu" in self.path.read_text().splitlines()[0] and not has_gpu():
            pytest.skip("needs a GPU")
        proc = subprocess.run([sys.executable, str(self.path)], capture_output=True, text=True)
        if proc.returncode != 0:
            last = proc.stderr.strip().splitlines()[-1]
            if "ImportError" in last or "ModuleNotFoundError" in last:
                pytest.skip(last)
            raise AssertionError(proc.stderr)
