import pytest


def test_tokenize():
    assert "a b".split() == ["a", "b"]


@pytest.mark.slow
def test_train_for_an_hour():
    pass


@pytest.mark.qualitative
def test_answers_are_good():
    pass


@pytest.mark.require_gpu
def test_generate_on_gpu():
    pass


@pytest.mark.require_ram(min_gb=1)
def test_load_small_model():
    pass


@pytest.mark.require_ram(min_gb=100000)
def test_load_huge_model():
    pass


@pytest.mark.vllm
def test_vllm_through_its_server(backend):
    assert backend.startswith("http")
