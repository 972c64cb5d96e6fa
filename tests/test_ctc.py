"""Greedy CTC decoding: hand-made matrices with known answers, and streaming == offline."""

from __future__ import annotations

import numpy as np
import pytest

from voiceloop.asr.ctc import StreamingGreedyDecoder, greedy_decode
from voiceloop.frames import CharInfo

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "|"]


class Vocab:
    """Minimal vocabulary with the wav2vec2 layout: specials 0-4, characters from 5."""

    def __init__(self, chars: str) -> None:
        self.tokens = SPECIALS + list(chars)
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.blank_id = 0

    def text(self, token_id: int) -> str:
        token = self.tokens[token_id]
        if token == "|":
            return " "
        return "" if token in SPECIALS else token

    def __len__(self) -> int:
        return len(self.tokens)


VOCAB = Vocab("你好世界天气")


def frames(*spec: str | tuple[str, float]) -> np.ndarray:
    """Log-probs, one row per item: a token name (p=0.9) or (token, p); "_" is the blank."""
    rows = []
    for item in spec:
        token, p = (item, 0.9) if isinstance(item, str) else item
        token = "<pad>" if token == "_" else token
        row = np.full(len(VOCAB), (1.0 - p) / (len(VOCAB) - 1))
        row[VOCAB.ids[token]] = p
        rows.append(np.log(row))
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(VOCAB))


def assert_chars_equal(got: list[CharInfo], want: list[CharInfo]) -> None:
    assert [c.char for c in got] == [c.char for c in want]
    for g, w in zip(got, want, strict=True):
        assert g.start == w.start and g.end == w.end
        assert g.confidence == pytest.approx(w.confidence, abs=1e-6)


# -- offline ------------------------------------------------------------------------------------


def test_collapse_blanks_and_times() -> None:
    text, chars = greedy_decode(frames("_", "你", "你", "_", "好", "好", "好", "_", "_", "世"), VOCAB)
    assert text == "你好世"
    assert [(c.char, c.start, c.end) for c in chars] == [
        ("你", 1 * 0.02, 3 * 0.02),
        ("好", 4 * 0.02, 7 * 0.02),
        ("世", 9 * 0.02, 10 * 0.02),
    ]


def test_repeat_needs_a_blank_to_count_twice() -> None:
    assert greedy_decode(frames("好", "好", "好"), VOCAB)[0] == "好"
    text, chars = greedy_decode(frames("好", "_", "好"), VOCAB)
    assert text == "好好"
    assert [(c.start, c.end) for c in chars] == [(0.0, 0.02), (0.04, 0.06)]


def test_confidence_is_mean_frame_max_prob() -> None:
    _, chars = greedy_decode(frames(("你", 0.9), ("你", 0.7), "_", ("好", 0.6)), VOCAB)
    assert chars[0].confidence == pytest.approx(0.8, abs=1e-6)
    assert chars[1].confidence == pytest.approx(0.6, abs=1e-6)


def test_frame_offset_and_frame_s() -> None:
    _, chars = greedy_decode(frames("_", "天", "天"), VOCAB, frame_offset=100, frame_s=0.01)
    assert (chars[0].start, chars[0].end) == (101 * 0.01, 103 * 0.01)


def test_delimiter_is_a_single_inner_space_without_charinfo() -> None:
    text, chars = greedy_decode(frames("|", "你", "|", "|", "_", "|", "好", "|", "_", "|"), VOCAB)
    assert text == "你 好"
    assert [c.char for c in chars] == ["你", "好"]
    assert greedy_decode(frames("|", "_", "|"), VOCAB) == ("", [])


def test_special_tokens_dropped_but_break_runs() -> None:
    text, chars = greedy_decode(frames("<s>", "你", "<unk>", "你", "</s>", "好"), VOCAB)
    assert text == "你你好"
    assert [(c.start, c.end) for c in chars] == [(0.02, 0.04), (0.06, 0.08), (0.1, 0.12)]


def test_empty_and_all_blank_and_bad_shape() -> None:
    assert greedy_decode(np.zeros((0, len(VOCAB)), np.float32), VOCAB) == ("", [])
    assert greedy_decode(frames("_", "_"), VOCAB) == ("", [])
    with pytest.raises(ValueError):
        greedy_decode(np.zeros(len(VOCAB)), VOCAB)


# -- streaming ----------------------------------------------------------------------------------


def random_log_probs(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """CTC-like matrix: runs of 1-6 frames of blanks, chars, delimiters and specials, random peaks."""
    ids: list[int] = []
    while len(ids) < n_frames:
        token = int(rng.choice([0, 0, 0, 1, 3, 4, *range(5, len(VOCAB))]))
        ids += [token] * int(rng.integers(1, 7))
    ids = ids[:n_frames]
    logits = rng.normal(0.0, 1.0, (n_frames, len(VOCAB)))
    logits[np.arange(n_frames), ids] += rng.uniform(1.0, 6.0, n_frames)
    logits -= np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return logits.astype(np.float32)


def random_split(rng: np.random.Generator, n: int) -> list[int]:
    """Sorted cut points in [0, n], repeats allowed (empty chunks must work too)."""
    return sorted(rng.integers(0, n + 1, int(rng.integers(0, 12))).tolist())


def test_any_split_commits_exactly_the_offline_result() -> None:
    rng = np.random.default_rng(1234)
    straddles = 0
    for _ in range(200):
        lp = random_log_probs(rng, int(rng.integers(0, 80)))
        want_text, want_chars = greedy_decode(lp, VOCAB)
        cuts = random_split(rng, len(lp))
        argmax = lp.argmax(axis=1)
        straddles += sum(1 for c in cuts if 0 < c < len(lp) and argmax[c - 1] == argmax[c] != 0)
        decoder = StreamingGreedyDecoder(VOCAB)
        for a, b in zip([0, *cuts], [*cuts, len(lp)], strict=True):
            decoder.commit(lp[a:b])
            assert want_text.startswith(decoder.text)  # committed text only ever grows
        assert decoder.committed_frames == len(lp)
        assert decoder.text == want_text
        assert_chars_equal(decoder.chars, want_chars)
    assert straddles > 50  # the property was exercised on runs cut by a commit boundary


def test_hypothesis_equals_offline_of_committed_plus_tail() -> None:
    rng = np.random.default_rng(99)
    for _ in range(200):
        lp = random_log_probs(rng, int(rng.integers(1, 60)))
        cut = int(rng.integers(0, len(lp) + 1))
        decoder = StreamingGreedyDecoder(VOCAB)
        decoder.commit(lp[:cut])
        full, chars, stable = decoder.hypothesis(lp[cut:])
        want_text, want_chars = greedy_decode(lp, VOCAB)
        assert full == want_text
        assert_chars_equal(chars, want_chars)
        assert stable == len(decoder.text) and full[:stable] == decoder.text
        preview_text, preview_chars = decoder.preview(lp[cut:])
        assert decoder.text + preview_text == full
        assert len(decoder.chars) + len(preview_chars) == len(chars)


def test_run_straddling_commits_is_one_char_that_grows() -> None:
    decoder = StreamingGreedyDecoder(VOCAB)
    assert decoder.commit(frames("_", ("你", 0.9))) == "你"
    assert decoder.commit(frames(("你", 0.7), ("你", 0.5))) == ""
    assert decoder.text == "你"
    [char] = decoder.chars
    assert (char.start, char.end) == (0.02, 0.08)
    assert char.confidence == pytest.approx(0.7, abs=1e-6)
    assert decoder.commit(frames("_", "你")) == "你"
    assert decoder.text == "你你"


def test_preview_leaves_committed_state_alone_and_does_not_duplicate() -> None:
    decoder = StreamingGreedyDecoder(VOCAB)
    decoder.commit(frames("_", "你", "你"))
    before = (decoder.text, [CharInfo(c.char, c.confidence, c.start, c.end) for c in decoder.chars])
    held = decoder.chars[0]

    text, chars = decoder.preview(frames("你", "_", "好"))
    assert text == "好"  # the continued 你 is not repeated
    assert [(c.char, c.start, c.end) for c in chars] == [("好", 5 * 0.02, 6 * 0.02)]
    full, all_chars, stable = decoder.hypothesis(frames("你", "_", "好"))
    assert (full, stable) == ("你好", 1)
    assert (all_chars[0].start, all_chars[0].end) == (0.02, 0.08)  # tail extends the open char

    assert decoder.preview(frames("你", "你")) == ("", [])
    assert decoder.text == before[0] and decoder.chars == before[1]
    assert decoder.committed_frames == 3
    assert (held.start, held.end) == (0.02, 0.06)  # objects handed out are never mutated
    decoder.commit(frames("_", "好"))
    assert decoder.text == "你好" and (held.start, held.end) == (0.02, 0.06)


def test_delimiter_at_commit_boundary() -> None:
    decoder = StreamingGreedyDecoder(VOCAB)
    decoder.commit(frames("你", "|"))
    assert decoder.text == "你"  # no trailing space: committed text stays a prefix
    text, chars = decoder.preview(frames("|", "好"))
    assert (text, [c.char for c in chars]) == (" 好", ["好"])
    assert decoder.hypothesis(frames("好"))[::2] == ("你 好", 1)
    assert decoder.preview(frames("_")) == ("", [])
    assert decoder.commit(frames("|", "好")) == " 好"
    assert decoder.text == "你 好"


def test_reset() -> None:
    decoder = StreamingGreedyDecoder(VOCAB, frame_s=0.02)
    decoder.commit(frames("你", "|", "好"))
    decoder.reset()
    assert (decoder.text, decoder.chars, decoder.committed_frames) == ("", [], 0)
    decoder.commit(frames("好"))
    assert decoder.text == "好"  # no stale delimiter or run carried over
    assert (decoder.chars[0].start, decoder.chars[0].end) == (0.0, 0.02)
    assert decoder.hypothesis(frames("好"))[::2] == ("好", 1)
