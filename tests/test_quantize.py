"""int8 packing: the backend choice per CPU and row count, and that every backend computes the same."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from voiceloop import quantize
from voiceloop.quantize import AMX_MIN_ROWS, ENGINE_ENV, int8_engine, int8_linears, packing_engine

ENGINES = [e for e in ("fbgemm", "onednn") if e in torch.backends.quantized.supported_engines]


def _mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))


def test_few_rows_stay_on_fbgemm_and_many_follow_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    assert int8_engine(1) == "fbgemm"
    monkeypatch.setattr(quantize, "has_amx", lambda: True)
    assert int8_engine(1) == "fbgemm"
    assert int8_engine(AMX_MIN_ROWS) == "onednn"
    monkeypatch.setattr(quantize, "has_amx", lambda: False)
    assert int8_engine(400) == "fbgemm"


def test_environment_overrides_and_rejects_unknown_engines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENGINE_ENV, "ONEDNN")
    assert int8_engine(1) == "onednn"
    monkeypatch.setenv(ENGINE_ENV, "tpu")
    with pytest.raises(ValueError, match=ENGINE_ENV):
        int8_engine(44)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_quantizes_alike_and_restores_the_global_setting(engine: str) -> None:
    before = torch.backends.quantized.engine
    x = torch.randn(44, 64)
    with torch.no_grad():
        exact = _mlp()(x)
    quantized = int8_linears(_mlp(), rows=44, engine=engine)
    assert torch.backends.quantized.engine == before
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    with torch.inference_mode():
        approx = quantized(x)
    assert float((approx - exact).norm() / exact.norm()) < 0.05
    other = int8_linears(_mlp(), rows=44, engine=ENGINES[0])
    with torch.inference_mode():
        torch.testing.assert_close(approx, other(x), atol=1e-4, rtol=1e-4)


def test_packing_engine_restores_after_an_error() -> None:
    before = torch.backends.quantized.engine
    other = next(e for e in torch.backends.quantized.supported_engines if e != before)
    with pytest.raises(RuntimeError), packing_engine(other):
        assert torch.backends.quantized.engine == other
        raise RuntimeError("boom")
    assert torch.backends.quantized.engine == before
