"""Fixtures shared by the demo's test modules."""

from __future__ import annotations

import pytest
from tinymodels import PretrainedModel, load_pretrained


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> PretrainedModel:
    """The pretrained model named by the test module's ``MODEL_NAME``, loaded once per module.

    ``load_pretrained`` caches it for the life of the process, as real loaders do: run in one process,
    every heavy module's model stays resident until the session ends.
    """
    return load_pretrained(request.module.MODEL_NAME)
