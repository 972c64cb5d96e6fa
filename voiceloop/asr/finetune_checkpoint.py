"""Where a fine-tuning run starts and what it leaves on disk (:mod:`.finetune` runs the loop).

The starting model and vocabulary (a checkpoint folder, hub id, or ``config.json`` for a random
init), the CTC head grown to new characters, the official hub layout of a saved model, and the
per-epoch checkpoints with the optimizer/RNG state a resume needs. Kept apart from the loop so the
file formats, which must stay loadable by transformers and by older runs, read on their own.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..hub import no_progress_bars
from .corpus import DELIMITER, PREPROCESSOR_CONFIG, SPECIALS, TargetVocab

_CHECKPOINT = re.compile(r"checkpoint-epoch(\d+)$")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _load_start(
    model: str | Path, texts: list[str], seed: int
) -> tuple[nn.Module, TargetVocab, dict[str, Any]]:
    """A directory/hub id with weights, or a ``config.json`` path for a random init of that config."""
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC

    path = Path(model)
    folder = path.parent if path.is_file() else path
    given = _read_json(folder / "special_tokens_map.json") or {}
    specials = {k: (v["content"] if isinstance(v, dict) else v) for k, v in given.items() if k in SPECIALS}
    specials = {**SPECIALS, **specials}
    preprocessor = {**PREPROCESSOR_CONFIG, **(_read_json(folder / "preprocessor_config.json") or {})}
    tokens = _read_json(folder / "vocab.json")
    if path.is_file():
        vocab = TargetVocab(tokens, specials) if tokens else TargetVocab.build(texts)
        config = Wav2Vec2Config.from_json_file(str(path))
        config.vocab_size = len(vocab.tokens)
        config.pad_token_id = vocab.blank
        torch.manual_seed(seed)
        return Wav2Vec2ForCTC(config), vocab, preprocessor
    if tokens is None:
        tokens = Wav2Vec2CTCTokenizer.from_pretrained(str(model)).get_vocab()
    return (
        Wav2Vec2ForCTC.from_pretrained(str(model), dtype=torch.float32),
        TargetVocab(tokens, specials),
        preprocessor,
    )


def _resize_head(model: nn.Module, vocab: TargetVocab) -> None:
    """Grow lm_head to the vocabulary: new rows start at the mean character row (+ small noise to break
    ties), so a new character begins as likely as an average known one and never above the blank."""
    old: nn.Linear = model.lm_head
    size = len(vocab.tokens)
    if size == old.out_features:
        return
    known = [i for i in range(old.out_features) if i not in vocab.skip and vocab.by_id.get(i) != DELIMITER]
    rows = torch.tensor(known or list(range(old.out_features)))
    head = nn.Linear(old.in_features, size)
    with torch.no_grad():
        weight, bias = old.weight[rows], old.bias[rows]
        head.weight[: old.out_features] = old.weight
        head.bias[: old.out_features] = old.bias
        noise = torch.randn(size - old.out_features, old.in_features) * 0.1 * weight.std()
        head.weight[old.out_features :] = weight.mean(0) + noise
        head.bias[old.out_features :] = bias.mean()
    model.lm_head = head
    model.config.vocab_size = size


def save_model(model: nn.Module, vocab: TargetVocab, preprocessor: dict[str, Any], out: Path) -> None:
    """The official hub layout: config.json, model.safetensors, vocab.json (ASCII-escaped like the hub's),
    special_tokens_map.json, preprocessor_config.json — loadable by Wav2Vec2Processor/ForCTC."""
    out.mkdir(parents=True, exist_ok=True)
    model.config.vocab_size = len(vocab.tokens)
    model.config.pad_token_id = vocab.blank
    with no_progress_bars():  # a "Writing shards" bar per checkpoint is noise
        model.save_pretrained(str(out))
    for name, data in (
        ("vocab.json", vocab.tokens),
        ("special_tokens_map.json", vocab.specials),
    ):
        (out / name).write_text(json.dumps(data), encoding="utf-8")
    # transformers' own format for this one (indented, sorted): byte-identical to the hub's 158-byte file
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2, sort_keys=True) + "\n")


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = [
        (int(m.group(1)), p)
        for p in out.glob("checkpoint-epoch*")
        if (m := _CHECKPOINT.search(p.name)) and (p / "trainer_state.json").is_file()
    ]
    return sorted(found)


def _load_training_state(path: Path) -> dict[str, Any]:
    """A checkpoint's optimizer/scheduler/RNG state; ``weights_only``: a file must not run code."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = "not a plain training state (older or tampered with); --no-resume starts over"
        raise UserError(f"{path}: {msg}") from exc


def _save_checkpoint(out: Path, epoch: int, saved: tuple[Any, ...], state: dict[str, Any], keep: int) -> None:
    """Write into a temp folder, then rename: an interrupted save never looks like a valid checkpoint."""
    final, tmp = out / f"checkpoint-epoch{epoch}", out / f".tmp-checkpoint-epoch{epoch}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(*saved, tmp)
    name, key, *rest = np.random.get_state()
    rng = {  # tensors and plain Python only: the resume loads with weights_only=True
        "python_rng": random.getstate(),
        "numpy_rng": (name, torch.from_numpy(key.astype(np.int64)), *rest),
        "torch_rng": torch.get_rng_state(),
    }
    torch.save({**state, **rng}, tmp / "training_state.pt")
    (tmp / "trainer_state.json").write_text(json.dumps({k: state[k] for k in ("epoch", "step", "options")}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, old in _checkpoints(out)[: -max(1, keep)]:
        shutil.rmtree(old)
