"""ONNX export of the ChatTTS hidden-state decode path (Decoder + Vocos up to the spectrum)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_tts_decoder import narrow_hidden, narrow_vocos, save

from voiceloop.tts.chattts.assets import DECODER, VOCOS
from voiceloop.tts.chattts.stream_decode import StreamDecodeOptions, WaveDecoder, stream_vs_offline

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from voiceloop.tts.chattts.onnx import (
    ONNX_FILE,
    REPORT_FILE,
    OnnxDecoder,
    OnnxExportError,
    export_onnx,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("chattts")
    (root / "asset").mkdir()
    decoder, vocos = narrow_hidden(), narrow_vocos()
    save(decoder, root / DECODER)
    save(vocos, root / VOCOS)
    path = export_onnx(root, root / "onnx")
    return path, WaveDecoder(decoder, vocos)


def test_export_writes_graph_and_report(exported):
    path, _ = exported
    assert path.name == ONNX_FILE and path.is_file()
    report = json.loads((path.parent / REPORT_FILE).read_text())
    print({k: v for k, v in report.items() if k != "window"})
    assert report["opset"] == 17 and report["step_dim"] == 16 and report["hop_length"] == 256
    assert report["context_steps"] == 52 and len(report["window"]) == 1024
    assert report["max_abs_diff"] < 1e-5


def test_onnx_decoder_matches_torch(exported):
    path, torch_decoder = exported
    onnx_decoder = OnnxDecoder(path.parent, threads=1)
    for shape in [(1, 16), (13, 16), (3, 29, 16)]:
        hidden = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape)))
        want = torch_decoder(hidden)
        got = onnx_decoder.decode(hidden)
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-5
    assert onnx_decoder.context == 52


def test_onnx_decoder_streams(exported):
    path, _ = exported
    onnx_decoder = OnnxDecoder(path, threads=1)
    hidden = torch.randn(70, 16, generator=torch.Generator().manual_seed(9))
    options = StreamDecodeOptions(first_chunk=6, chunk=11, lookahead=52, left_context=52)
    report = stream_vs_offline(onnx_decoder.decode, hidden, options, push_size=3)
    assert report["stream_samples"] == report["offline_samples"] == 512 * 70 - 256
    assert report["max_abs_diff"] <= 1e-6


def test_onnx_errors(exported, tmp_path):
    path, _ = exported
    onnx_decoder = OnnxDecoder(path)
    with pytest.raises(ValueError):
        onnx_decoder.decode(np.zeros((4, 15), np.float32))
    with pytest.raises(ValueError):
        onnx_decoder.decode(np.zeros((0, 16), np.float32))
    with pytest.raises(OnnxExportError):
        export_onnx(tmp_path, tmp_path / "out", opset=12)
    with pytest.raises(ValueError):
        OnnxDecoder(tmp_path)
