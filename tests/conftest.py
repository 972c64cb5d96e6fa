"""Shared fixtures; the test helpers are the ``helpers`` package beside this file."""

import pytest


def pytest_collection_modifyitems(items):
    """Tests on a real sound server are long integration tests: ``pytest -m "not slow"`` skips them."""
    for item in items:
        if "pulse" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on 1 torch thread: more threads only add contention (and 100x slowdowns under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def chattts_root(tmp_path_factory):
    """Random ChatTTS assets (2-layer GPT, official widths, synthesized tokenizer), written once."""
    from helpers.chattts_fixtures import write_random_assets

    return write_random_assets(
        tmp_path_factory.mktemp("chattts"), gpt_layers=2, seed=0, official_tokenizer=None
    )
