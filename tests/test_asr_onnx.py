"""ONNX export and the onnxruntime backend, checked for parity against torch on tiny checkpoints."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.asr_fixtures import make_tiny_checkpoint

from voiceloop.asr.ctc import greedy_decode
from voiceloop.asr.model import Wav2Vec2Checkpoint
from voiceloop.asr.onnx import CONV_FILE, ENCODER_FILE, ENCODER_INT8_FILE, OnnxCheckpoint
from voiceloop.asr.onnx_export import PROBE_SECONDS, REPORT_FILE, export_onnx
from voiceloop.asr.streaming import StreamingOptions, Wav2Vec2Engine
from voiceloop.frames import FRAME_SAMPLES

pytest.importorskip("onnxruntime", reason="the ONNX backend needs the onnx extra")


pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
#: Lengths unlike both the 1 s tracing example and the export-time probe (dynamic axis check).
LENGTHS_S = (0.73, 3.1)
LAYOUTS = ("2021", "modern", "group")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        "2021": make_tiny_checkpoint(root / "2021", layout="2021", seed=3),
        "modern": make_tiny_checkpoint(root / "modern", layout="modern", seed=5),
        # wav2vec2-base style: GroupNorm conv (whole-input, so the engine does not cache it), post-LN.
        "group": make_tiny_checkpoint(
            root / "group", layout="modern", seed=7, feat_extract_norm="group", do_stable_layer_norm=False
        ),
    }


@pytest.fixture(scope="module")
def exports(sources, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """fp32 exports, except the modern one with --int8 (which also keeps the fp32 encoder)."""
    root = tmp_path_factory.mktemp("onnx")
    return {
        layout: (root / layout, export_onnx(str(source), root / layout, int8=layout == "modern"))
        for layout, source in sources.items()
    }


@pytest.fixture(scope="module")
def torch_checkpoints(sources) -> dict[str, Wav2Vec2Checkpoint]:
    return {layout: Wav2Vec2Checkpoint.from_pretrained(str(path)) for layout, path in sources.items()}


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * 16_000)
    envelope = np.abs(np.sin(np.arange(n) / 16_000 * np.pi * 3)) + 0.1
    return (rng.normal(0, 0.2, n) * envelope * 32767 * 0.3).astype(np.int16)


def as_float(audio: np.ndarray) -> np.ndarray:
    return audio.astype(np.float32) / 32768.0


def stream_text(engine: Wav2Vec2Engine, audio: np.ndarray) -> tuple[list[str], str]:
    async def main() -> tuple[list[str], str]:
        session = engine.session()
        partials = []
        for i in range(0, len(audio), FRAME_SAMPLES):
            partial = await session.accept(audio[i : i + FRAME_SAMPLES])
            if partial is not None:
                partials.append(partial.text)
        return partials, (await session.finalize()).text

    try:
        return asyncio.run(main())
    finally:
        engine.lane.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_writes_a_self_contained_directory(exports, sources, torch_checkpoints, layout) -> None:
    directory, report = exports[layout]
    names = {p.name for p in directory.iterdir()}
    assert {CONV_FILE, ENCODER_FILE, REPORT_FILE, "config.json", "vocab.json"} <= names
    assert not names & {"pytorch_model.bin", "model.safetensors"}  # no torch weights needed
    assert (ENCODER_INT8_FILE in names) == (layout == "modern")
    assert json.loads((directory / REPORT_FILE).read_text(encoding="utf-8")) == report
    assert report["opset"] == 17 and report["int8"] == (layout == "modern")
    assert report["source"] == str(sources[layout])
    assert set(report["versions"]) == {"torch", "transformers", "onnx", "onnxruntime"}
    assert report["files"][ENCODER_FILE] == (directory / ENCODER_FILE).stat().st_size
    assert report["max_abs_log_prob_diff"] < 1e-4, report
    assert report["greedy_equal"] is True

    onnx_ckpt = OnnxCheckpoint.from_directory(directory, int8=False)
    torch_ckpt = torch_checkpoints[layout]
    assert onnx_ckpt.vocab == torch_ckpt.vocab
    for attr in ("sample_rate", "do_normalize", "conv_stride", "conv_receptive_field", "local_conv"):
        assert getattr(onnx_ckpt, attr) == getattr(torch_ckpt, attr), attr
    for attr in ("conv_dim", "hidden_size", "num_layers", "vocab_size"):
        assert getattr(onnx_ckpt, attr) == getattr(torch_ckpt, attr), attr


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seconds", LENGTHS_S)
def test_fp32_parity_with_torch_at_other_lengths(exports, torch_checkpoints, layout, seconds) -> None:
    directory, _ = exports[layout]
    onnx_ckpt = OnnxCheckpoint.from_directory(directory, int8=False)
    torch_ckpt = torch_checkpoints[layout]
    audio = as_float(speechlike(seconds, seed=11))
    assert seconds not in (1.0, PROBE_SECONDS)

    reference, exported = torch_ckpt.log_probs(audio), onnx_ckpt.log_probs(audio)
    assert exported.shape == reference.shape == (torch_ckpt.frames_for(len(audio)), torch_ckpt.vocab_size)
    diff = float(np.abs(exported - reference).max())
    assert diff < 1e-4, f"{layout} {seconds} s: max |log-prob diff| = {diff:.3g}"
    text = greedy_decode(reference, torch_ckpt.vocab)[0]
    assert text, "a random model that decodes to nothing would make the comparison vacuous"
    assert greedy_decode(exported, onnx_ckpt.vocab)[0] == text

    # The stage API the streaming engine drives: conv features, identity projection, encode.
    samples = onnx_ckpt.normalize(audio)
    conv = onnx_ckpt.conv_features(samples)
    assert conv.dtype == torch.float32 and conv.shape == (len(reference), onnx_ckpt.conv_dim)
    torch_conv = torch_ckpt.conv_features(samples)
    assert float((conv - torch_conv).abs().max()) < 1e-4
    assert onnx_ckpt.project(conv) is conv
    log_probs, states = onnx_ckpt.encode(conv)
    assert states is None and np.allclose(log_probs.numpy(), exported, atol=1e-6)


def test_edge_lengths(exports, torch_checkpoints) -> None:
    directory, _ = exports["2021"]
    onnx_ckpt = OnnxCheckpoint.from_directory(directory)
    torch_ckpt = torch_checkpoints["2021"]
    field = onnx_ckpt.conv_receptive_field
    for n in (0, field - 1):
        assert onnx_ckpt.conv_features(np.zeros(n, np.float32)).shape == (0, onnx_ckpt.conv_dim)
        assert onnx_ckpt.log_probs(np.zeros(n, np.float32)).shape == (0, onnx_ckpt.vocab_size)
    assert onnx_ckpt.encode(torch.zeros(0, onnx_ckpt.conv_dim))[0].shape == (0, onnx_ckpt.vocab_size)
    audio = as_float(speechlike(0.5, seed=4))[: field + onnx_ckpt.conv_stride]  # two frames
    reference, exported = torch_ckpt.log_probs(audio), onnx_ckpt.log_probs(audio)
    assert exported.shape == (2, onnx_ckpt.vocab_size)
    assert float(np.abs(exported - reference).max()) < 1e-4
    with pytest.raises(ValueError, match="1-D"):
        onnx_ckpt.conv_features(np.zeros((2, 800), np.float32))
    with pytest.raises(ValueError, match="identity"):
        onnx_ckpt.encode(torch.zeros(3, onnx_ckpt.conv_dim + 1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_streaming_engine_on_onnx_matches_torch(exports, torch_checkpoints, layout) -> None:
    directory, _ = exports[layout]
    audio = speechlike(4.2, seed=21)  # several windows: conv caching, commits, the final flush
    # The ONNX graph re-encodes the left context every step (no key/value inputs): compare with
    # torch doing the same.
    recompute = StreamingOptions(cache_context=False)
    torch_engine = Wav2Vec2Engine(torch_checkpoints[layout], recompute)
    torch_partials, torch_final = stream_text(torch_engine, audio)
    onnx_engine = Wav2Vec2Engine(OnnxCheckpoint.from_directory(directory, int8=False, threads=1))
    assert not onnx_engine.caches_context and Wav2Vec2Engine(torch_checkpoints[layout]).caches_context
    onnx_partials, onnx_final = stream_text(onnx_engine, audio)
    assert torch_final, "vacuous comparison"
    assert len(torch_partials) >= 2
    assert onnx_final == torch_final
    assert onnx_partials == torch_partials


def test_int8_export_loads_and_transcribes(exports, torch_checkpoints) -> None:
    directory, report = exports["modern"]
    diff = report["int8_max_abs_log_prob_diff"]
    assert isinstance(diff, float) and diff < 0.5, f"int8 max |log-prob diff| = {diff:.3g}"
    assert isinstance(report["int8_greedy_equal"], bool)

    auto = OnnxCheckpoint.from_directory(directory)  # int8=None: the export's --int8 choice wins
    assert auto.int8 is True
    assert OnnxCheckpoint.from_directory(directory, int8=False).int8 is False
    audio = speechlike(2.6, seed=5)
    torch_ckpt = torch_checkpoints["modern"]
    reference, quantized = torch_ckpt.log_probs(as_float(audio)), auto.log_probs(as_float(audio))
    assert quantized.shape == reference.shape
    lp_diff = float(np.abs(quantized - reference).max())
    agreement = float((quantized.argmax(1) == reference.argmax(1)).mean())
    print(f"int8: max |log-prob diff| {lp_diff:.3g}, frame argmax agreement {agreement:.1%}")
    assert lp_diff < 0.5, f"int8 max |log-prob diff| = {lp_diff:.3g}"
    assert agreement > 0.8, f"int8 frame argmax agreement {agreement:.1%}"
    engine = Wav2Vec2Engine(auto)
    final = engine.transcribe(audio)
    assert isinstance(final.text, str) and final.text
    engine.lane.close()


def test_int8_is_chosen_only_when_present(exports) -> None:
    directory, _ = exports["2021"]
    assert OnnxCheckpoint.from_directory(directory).int8 is False
    with pytest.raises(FileNotFoundError, match="--int8"):
        OnnxCheckpoint.from_directory(directory, int8=True)


def test_threads_go_to_the_session_options(exports) -> None:
    ckpt = OnnxCheckpoint.from_directory(exports["2021"][0], threads=2)
    assert ckpt.conv_session.get_session_options().intra_op_num_threads == 2
    assert ckpt.encoder_session.get_session_options().intra_op_num_threads == 2
    ckpt.apply_threads()  # a no-op, but the engine's compute lane calls it
    with pytest.raises(ValueError, match="threads"):
        OnnxCheckpoint.from_directory(exports["2021"][0], threads=0)


def test_embeddings_need_the_torch_backend(exports) -> None:
    ckpt = OnnxCheckpoint.from_directory(exports["2021"][0])
    with pytest.raises(ValueError, match="torch backend"):
        ckpt.encode(torch.zeros(5, ckpt.conv_dim), layer=-1)
    engine = Wav2Vec2Engine(ckpt)
    with pytest.raises(ValueError, match="torch backend"):
        engine.embed(speechlike(1.0))
    engine.lane.close()


def test_clear_errors_for_directories_without_onnx_files(tmp_path, sources) -> None:
    with pytest.raises(FileNotFoundError, match="voiceloop asr export-onnx"):
        OnnxCheckpoint.from_directory(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"lacks conv\.onnx.*--backend torch.*export-onnx"):
        OnnxCheckpoint.from_directory(sources["2021"])
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / CONV_FILE).write_bytes(b"")
    (partial / ENCODER_FILE).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"config\.json, vocab\.json, preprocessor_config\.json"):
        OnnxCheckpoint.from_directory(partial)


def test_missing_onnxruntime_says_how_to_install(monkeypatch, exports, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'voiceloop\[onnx\]'"):
        OnnxCheckpoint.from_directory(exports["2021"][0])
    with pytest.raises(ImportError, match=r"voiceloop\[onnx\]"):
        export_onnx("unused", Path("unused"))

    from voiceloop.cli import main

    assert main(["asr", "export-onnx", "unused", "unused"]) == 2  # one line, no traceback
    assert "pip install 'voiceloop[onnx]'" in capsys.readouterr().err


def test_bad_opset_fails_before_loading(tmp_path) -> None:
    for opset in (13, 21, True):
        with pytest.raises(ValueError, match="opset"):
            export_onnx("does-not-matter", tmp_path, opset=opset)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_cli_export_then_transcribe(sources, tmp_path, capsys) -> None:
    out = tmp_path / "onnx"
    command = ["asr", "export-onnx", str(sources["2021"]), str(out), "--int8", "--opset", "18"]
    result = subprocess.run(
        [sys.executable, "-m", "voiceloop", *command],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in (CONV_FILE, ENCODER_FILE, ENCODER_INT8_FILE, "max |log-prob diff|", "int8 encoder"):
        assert name in result.stdout, result.stdout
    report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert report["int8"] is True and report["opset"] == 18 and report["max_abs_log_prob_diff"] < 1e-4

    import soundfile

    from voiceloop.cli import main

    wav = tmp_path / "speech.wav"
    audio = speechlike(1.5, seed=8)
    soundfile.write(wav, audio, 16_000, subtype="PCM_16")
    assert main(["transcribe", "--backend", "onnx", "--model", str(out), "--threads", "1", str(wav)]) == 0
    onnx_text = capsys.readouterr().out.strip()
    expected = OnnxCheckpoint.from_directory(out).log_probs(as_float(audio))
    assert onnx_text == greedy_decode(expected, OnnxCheckpoint.from_directory(out).vocab)[0]

    export_onnx(str(sources["2021"]), out)  # re-export without --int8: no stale int8 encoder left behind
    assert not (out / ENCODER_INT8_FILE).exists()
    assert OnnxCheckpoint.from_directory(out).int8 is False


def test_cli_reports_a_missing_model_directory(tmp_path, capsys) -> None:
    from voiceloop.cli import main

    missing = tmp_path / "nope"
    assert main(["transcribe", "--backend", "onnx", "--model", str(missing), str(tmp_path / "x.wav")]) == 2
    assert "export-onnx" in capsys.readouterr().err
