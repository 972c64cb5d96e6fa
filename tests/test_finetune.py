"""``voiceloop asr finetune`` on a handful of espeak-ng utterances and a toy checkpoint (a few seconds).

What matters here is the contract, not accuracy: the vocabulary grows for unseen characters, frozen
weights stay bit-identical, every epoch logs a CER, checkpoints resume where they stopped, the final
folder is the official hub layout, and manifest mistakes name their line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from helpers.asr_fixtures import make_tiny_checkpoint, tiny_vocab
from helpers.speech import RATE, espeak, require_espeak

from voiceloop.asr.corpus import char_error_rate, read_manifest
from voiceloop.asr.finetune import FinetuneOptions, add_parser, finetune
from voiceloop.errors import UserError

TEXTS = ["你好", "天气很好", "一二三", "再见"]  # 再, 见 are not in the starting vocabulary
START_CHARS = "你好天气很一二三四五"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four short utterances; one stored as 22.05 kHz stereo so loading must downmix and resample."""
    require_espeak()
    root = tmp_path_factory.mktemp("corpus")
    (root / "wav").mkdir()
    lines = []
    for i, text in enumerate(TEXTS):
        audio = espeak(text, voice="cmn-latn-pinyin", speed=180).astype(np.float32) / 32768.0
        name = f"wav/{i}.wav"
        if i == 0:
            audio = soxr.resample(audio, RATE, 22050)
            sf.write(root / name, np.stack([audio, 0.5 * audio], axis=1), 22050)
        else:
            sf.write(root / name, audio, RATE)
        lines.append(json.dumps({"audio": name, "text": text}, ensure_ascii=False))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _options(**kwargs: object) -> FinetuneOptions:
    defaults: dict[str, object] = {"epochs": 3, "batch_size": 2, "lr": 3e-3, "warmup": 2, "threads": 2,
                                   "freeze_layers": 1, "progress": False, "seed": 0}  # fmt: skip
    defaults.update(kwargs)
    return FinetuneOptions(**defaults)  # type: ignore[arg-type]


def _state(path: Path) -> dict[str, torch.Tensor]:
    from transformers import Wav2Vec2ForCTC

    return Wav2Vec2ForCTC.from_pretrained(str(path)).state_dict()


@pytest.mark.slow  # fine-tuning: seconds of training
def test_finetune_extends_vocab_freezes_logs_and_resumes(corpus: Path, tmp_path: Path) -> None:
    start = make_tiny_checkpoint(tmp_path / "start", layout="2021", vocab=tiny_vocab(START_CHARS))
    out = tmp_path / "out"
    manifest = corpus / "train.jsonl"
    result = finetune(start, manifest, manifest, out, _options(epochs=2))
    assert result["added_chars"] == ["再", "见"]
    assert [row["epoch"] for row in result["history"]] == [1, 2]

    # Resume: a longer run picks up after epoch 2 instead of starting over.
    result = finetune(start, manifest, manifest, out, _options(epochs=4))
    assert result["resumed_from"] == 2
    assert [row["epoch"] for row in result["history"]] == [3, 4]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert all(row["eval_cer"] >= 0.0 and row["eval_loss"] > 0 for row in rows)  # insertions: CER may pass 1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert sorted(p.name for p in out.glob("checkpoint-epoch*")) == ["checkpoint-epoch3", "checkpoint-epoch4"]
    state = json.loads((out / "checkpoint-epoch4" / "trainer_state.json").read_text())
    assert state["epoch"] == 4 and state["step"] == 8  # 2 batches per epoch

    # Vocabulary: appended after the existing ids, head and config grown to match.
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    old = tiny_vocab(START_CHARS)
    assert {k: vocab[k] for k in old} == old
    assert sorted(vocab[c] for c in "再见") == [len(old), len(old) + 1]
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(vocab) and config["pad_token_id"] == 0 and config["ctc_zero_infinity"]

    # Frozen: conv feature encoder, projection, positional conv and layer 0 are bit-identical; layer 1 moved.
    before, after = _state(start), _state(out)
    assert after["lm_head.weight"].shape[0] == len(vocab)
    frozen = ("feature_extractor.", "feature_projection.", "pos_conv_embed.", "encoder.layers.0.")
    for key, value in before.items():
        if any(part in key for part in frozen):
            assert torch.equal(value, after[key]), key
    assert not torch.equal(before["wav2vec2.encoder.layers.1.feed_forward.output_dense.weight"],
                           after["wav2vec2.encoder.layers.1.feed_forward.output_dense.weight"])  # fmt: skip

    # The official layout, loadable by the plain transformers classes.
    from transformers import Wav2Vec2Processor

    names = {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    }
    assert names <= {p.name for p in out.iterdir()}
    processor = Wav2Vec2Processor.from_pretrained(str(out))
    assert processor.tokenizer.pad_token_id == 0 and processor.feature_extractor.do_normalize
    assert processor.tokenizer.convert_tokens_to_ids("见") == vocab["见"]


class _RunsCode:
    """Unpickled, it creates ``marker``: what a tampered training_state.pt could do with a full unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


@pytest.mark.slow  # fine-tuning: seconds of training
def test_resume_loads_the_training_state_weights_only(corpus: Path, tmp_path: Path) -> None:
    start = make_tiny_checkpoint(tmp_path / "start", layout="2021", vocab=tiny_vocab(START_CHARS))
    out, manifest = tmp_path / "out", corpus / "train.jsonl"
    finetune(start, manifest, None, out, _options(epochs=1))
    saved = out / "checkpoint-epoch1" / "training_state.pt"
    assert torch.load(saved, weights_only=True)["epoch"] == 1  # plain tensors and Python only
    live, marker = tmp_path / "live.pt", tmp_path / "code-ran"
    torch.save({"epoch": _RunsCode(marker)}, live)
    torch.load(live, weights_only=False)
    assert marker.exists()  # the fixture is live: a full unpickle runs it
    marker.unlink()
    saved.write_bytes(live.read_bytes())
    with pytest.raises(UserError, match="not a plain training state"):
        finetune(start, manifest, None, out, _options(epochs=2))
    assert not marker.exists()


@pytest.mark.slow  # fine-tuning: seconds of training
def test_random_init_from_config_and_cli(corpus: Path, tmp_path: Path) -> None:
    """``--init-config``: random weights, the vocabulary built from the training text in the hub format."""
    from helpers.asr_fixtures import tiny_config

    config = tmp_path / "config.json"
    config.write_text(tiny_config(10).to_json_string())
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    out = tmp_path / "out"
    manifest = str(corpus / "train.jsonl")
    args = parser.parse_args(["finetune", "--train", manifest, "--eval", manifest, "--out", str(out),
                              "--init-config", str(config), "--epochs", "1", "--batch-size", "4",
                              "--train-feature-encoder", "--threads", "2"])  # fmt: skip
    assert args.func(args) == 0
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert list(vocab)[:5] == ["<pad>", "<s>", "</s>", "<unk>", "|"]
    assert list(vocab)[5:] == sorted(set("".join(TEXTS)))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(vocab)
    assert (out / "checkpoint-epoch1" / "training_state.pt").is_file()


def test_manifest_errors_name_the_line(tmp_path: Path) -> None:
    good = tmp_path / "a.wav"
    sf.write(good, np.zeros(1600, np.float32), RATE)
    cases = {
        '{"audio": "a.wav", "text": "你好"}\nnot json\n': "m.jsonl:2: not valid JSON",
        '{"audio": "a.wav"}\n': "m.jsonl:1: 'text' must be a non-empty string",
        '{"audio": "a.wav", "text": "  "}\n': "m.jsonl:1: 'text' must be a non-empty string",
        '\n{"audio": "missing.wav", "text": "好"}\n': "m.jsonl:2: audio file not found",
        '["a.wav", "好"]\n': "m.jsonl:1: expected an object",
        "\n": "no utterances",
    }
    for content, message in cases.items():
        manifest = tmp_path / "m.jsonl"
        manifest.write_text(content, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            read_manifest(manifest)
    manifest.write_text('{"audio": "a.wav", "text": " 你  好 "}\n', encoding="utf-8")
    (item,) = read_manifest(manifest)
    assert item.audio == good and item.text == "你 好" and item.seconds == pytest.approx(0.1)


def test_cer_ignores_spaces() -> None:
    assert char_error_rate(["你好 世界"], ["你好世界"]) == 0.0
    assert char_error_rate(["你好", "天气"], ["你", "天汽"]) == pytest.approx(2 / 4)
    assert char_error_rate(["一二"], [""]) == 1.0
