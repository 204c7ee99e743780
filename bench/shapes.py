"""The four torch suite shapes of issue #21's isolation target, each in its own directory.

10 heavy modules (``requires_heavy_ram``, ini ``heavy_ram_gib = 1``) of 3 tests, each ``import torch``:

- ``small``: a small torch op per test;
- ``import_op``: plus ``W = torch.ones(256, 256)`` at module level, above ATen's grain size, so the
  OpenMP pool starts in the parent while it collects;
- ``fixture``: a model built in a module-scoped fixture, run by each test;
- ``light_first``: small ops, plus a light (unmarked) module that runs a 512x512 matmul with two
  threads in the parent before the heavy modules.

Run ``python bench/shapes.py DIR`` and compare, paired, ``python -m pytest -q -p no:cacheprovider``
(the default: isolated) with the same plus ``--heavy-isolate never`` in each ``DIR/<shape>``, with
``PYTEST_HEAVY_ASSUME=ram=16GiB``.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODULES, TESTS = 10, 3
INI = "[pytest]\nheavy_ram_gib = 1\n"
HEAD = "import pytest\nimport torch\n\npytestmark = pytest.mark.requires_heavy_ram\n"
SMALL_TEST = ("\n\n@pytest.mark.parametrize('i', range({tests}))\ndef test_case(i):\n"
              "    assert torch.ones(8).add(i).sum().item() == 8 * (1 + i)\n")
FIXTURE = ("\n\n@pytest.fixture(scope='module')\ndef model():\n    nn = torch.nn\n"
           "    return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))\n"
           "\n\n@pytest.mark.parametrize('i', range({tests}))\ndef test_case(model, i):\n"
           "    assert model(torch.ones(4, 256) * i).shape == (4, 10)\n")
LIGHT = ("import torch\n\n\ndef test_light():\n    torch.set_num_threads(2)\n"
         "    assert (torch.ones(512, 512) @ torch.ones(512, 512)).sum().item() == 512 ** 3\n")

SHAPES = {
    "small": HEAD + SMALL_TEST,
    "import_op": HEAD.replace("import torch\n", "import torch\nW = torch.ones(256, 256)\n") + SMALL_TEST,
    "fixture": HEAD + FIXTURE,
    "light_first": HEAD + SMALL_TEST,
}


def write(root: Path) -> list[Path]:
    """Write every shape under ``root``; returns their directories."""
    made = []
    for shape, body in SHAPES.items():
        directory = root / shape
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "pytest.ini").write_text(INI)
        for m in range(MODULES):
            (directory / f"test_heavy_{m:02d}.py").write_text(body.format(tests=TESTS))
        if shape == "light_first":
            (directory / "test_0_light.py").write_text(LIGHT)
        made.append(directory)
    return made


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/shapes")):
        print(path)
