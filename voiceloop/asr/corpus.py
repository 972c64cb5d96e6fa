"""Labelled speech for fine-tuning and scoring: manifests, audio loading, CTC targets, CER.

Kept apart from :mod:`.finetune` so benchmarks and tests can score transcripts without the
training loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

RATE = 16_000
#: special_tokens_map.json of the hub checkpoint (this key order reproduces its 85 bytes).
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
DELIMITER = "|"
#: The hub checkpoint's preprocessor_config.json (what ``Wav2Vec2Processor`` needs next to vocab.json).
PREPROCESSOR_CONFIG = {
    "do_normalize": True,
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
    "sampling_rate": RATE,
}


@dataclass
class Utterance:
    audio: Path
    text: str
    seconds: float


def normalize_text(text: str) -> str:
    """Collapse whitespace: spaces become the word delimiter, so only single ones may remain."""
    return " ".join(text.split())


def read_manifest(path: str | Path) -> list[Utterance]:
    """JSON lines ``{"audio": "a.wav", "text": "你好"}``; relative paths resolve against the manifest."""
    path = Path(path)
    items: list[Utterance] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("audio"), str):
            raise ValueError(f"{where}: expected an object with a string 'audio' and 'text'")
        text = entry.get("text")
        if not isinstance(text, str) or not normalize_text(text):
            raise ValueError(f"{where}: 'text' must be a non-empty string")
        audio = Path(entry["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        if not audio.is_file():
            raise ValueError(f"{where}: audio file not found: {audio}")
        try:
            info = sf.info(str(audio))
        except Exception as exc:  # soundfile raises its own error types for undecodable files
            raise ValueError(f"{where}: cannot read audio {audio}: {exc}") from None
        items.append(Utterance(audio, normalize_text(text), info.frames / info.samplerate))
    if not items:
        raise ValueError(f"{path}: manifest has no utterances")
    return items


def load_audio(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz (loaded per batch, so corpora need not fit in memory)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1)
    return soxr.resample(mono, rate, RATE).astype(np.float32) if rate != RATE else mono


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def char_error_rate(refs: list[str], hyps: list[str]) -> float:
    """Character edits / reference characters over a corpus, spaces ignored (Chinese has no words)."""
    edits = sum(
        edit_distance(r.replace(" ", ""), h.replace(" ", "")) for r, h in zip(refs, hyps, strict=True)
    )
    total = sum(len(r.replace(" ", "")) for r in refs)
    return edits / max(total, 1)


class TargetVocab:
    """vocab.json plus the special tokens; knows how to turn text into CTC targets and back."""

    def __init__(self, tokens: dict[str, int], specials: dict[str, str]) -> None:
        self.tokens, self.specials = tokens, specials
        self.by_id = {i: t for t, i in tokens.items()}
        self.blank = tokens[specials["pad_token"]]
        self.skip = {tokens[t] for t in specials.values() if t in tokens}

    def encode(self, text: str) -> list[int]:
        unk = self.tokens.get(self.specials["unk_token"], self.blank)
        return [self.tokens.get(DELIMITER if c == " " else c, unk) for c in text]

    def decode(self, ids: list[int]) -> str:
        """Greedy CTC: collapse repeats, drop blanks and special tokens."""
        out, last = [], None
        for i in ids:
            if i != last and i not in self.skip:
                out.append(" " if self.by_id.get(i) == DELIMITER else self.by_id.get(i, ""))
            last = i
        return "".join(out).strip()

    def extend(self, texts: list[str]) -> list[str]:
        """Append characters of ``texts`` that the vocabulary lacks (sorted, after the existing ids)."""
        new = sorted({c for t in texts for c in t if c != " "} - set(self.tokens))
        for char in new:
            self.tokens[char] = len(self.tokens)
            self.by_id[self.tokens[char]] = char
        return new

    @classmethod
    def build(cls, texts: list[str]) -> TargetVocab:
        """The hub format: ``<pad> <s> </s> <unk> |`` as ids 0-4, then the sorted characters."""
        vocab = cls(
            {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", DELIMITER])}, dict(SPECIALS)
        )
        vocab.extend(texts)
        return vocab
