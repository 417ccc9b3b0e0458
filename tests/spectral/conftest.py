import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_filter_cache(tmp_path_factory, monkeypatch):
    """Each test session writes filters to a private cache, never the user's ~/.cache."""
    monkeypatch.setenv("EMREASON_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "emreason-cache"))
    torch.manual_seed(0)
