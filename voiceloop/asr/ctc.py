"""Greedy CTC decoding (offline and streaming) with per-character confidence and timing.

Greedy is the v1 decoder for both partials and finals: without a real Chinese character LM a
beam search returns the greedy output at many times the cost (research notes, ASR section 4).

Rules (both decoders): argmax per frame, collapse runs of the same id, drop the blank and
tokens whose text is "" (specials; they still break a run, like the blank does). The word
delimiter (text " ") becomes a single space between characters, never leading, trailing or
doubled, and is not a :class:`CharInfo`. Each character's confidence is the mean over its run of
the frame max-probability (``exp`` of the max log-prob, so the input must be log-probs, not raw
logits); its span is ``[first frame, last frame + 1) * frame_s`` in stream time.

The streaming decoder keeps the last committed frame's argmax, so collapse is continuous across
commit boundaries: committing a matrix in any split gives exactly the offline result. A
character's text is final as soon as its first frame is committed; its span and confidence stay
open while its run continues into later frames.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from ..frames import CharInfo

__all__ = ["CtcVocab", "StreamingGreedyDecoder", "greedy_decode"]


class CtcVocab(Protocol):
    """What the decoders need from a vocabulary (structural: no import of the model module)."""

    blank_id: int

    def text(self, token_id: int) -> str:
        """Delimiter -> " ", special tokens -> "", otherwise the token's character(s)."""
        ...

    def __len__(self) -> int: ...


def _runs(log_probs: np.ndarray) -> tuple[list[int], list[int], list[int], list[float]]:
    """Vectorised per-chunk work: run token ids, starts, ends (exclusive) and summed max-probs.

    Everything per frame happens in numpy; the caller only loops over runs.
    """
    lp = np.asarray(log_probs)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be [frames, vocab], got shape {lp.shape}")
    n = lp.shape[0]
    if n == 0:
        return [], [], [], []
    ids = lp.argmax(axis=1)
    # float64 before exp: the streamed and offline sums must agree to ~1e-12, not float32 eps.
    probs = np.exp(np.take_along_axis(lp, ids[:, None], axis=1)[:, 0].astype(np.float64))
    starts = np.concatenate(([0], np.flatnonzero(ids[1:] != ids[:-1]) + 1))
    ends = np.append(starts[1:], n)
    sums = np.add.reduceat(probs, starts)
    return ids[starts].tolist(), starts.tolist(), ends.tolist(), sums.tolist()


@dataclass(slots=True)
class _State:
    """Everything the decoder carries between chunks (scalars only, so copying is free)."""

    frames: int = 0  # frames fed so far
    last_id: int = -1  # argmax of the last frame fed; -1 before any frame
    run_char: str | None = None  # text of the open run when it is a character, else None
    run_start: int = 0  # open character run: first frame, end frame (exclusive), sum of max-probs
    run_end: int = 0
    run_sum: float = 0.0
    has_text: bool = False  # a character has been emitted (a delimiter now means a space)
    pending_space: bool = False  # a delimiter was seen since the last character


class _Core:
    """Shared run bookkeeping; the caller owns the state and the output lists."""

    def __init__(self, vocab: CtcVocab, frame_s: float, frame_offset: int) -> None:
        self.vocab = vocab
        self.blank_id = int(vocab.blank_id)
        self.frame_s = frame_s
        self.frame_offset = frame_offset
        self._texts: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        """Cached ``vocab.text`` (the blank is always empty, whatever the vocabulary says)."""
        text = self._texts.get(token_id)
        if text is None:
            text = "" if token_id == self.blank_id else self.vocab.text(token_id)
            self._texts[token_id] = text
        return text

    def open_char(self, st: _State) -> CharInfo | None:
        """The open run's character as it stands now (a fresh object: callers may keep it)."""
        if st.run_char is None:
            return None
        count = st.run_end - st.run_start
        return CharInfo(
            st.run_char,
            st.run_sum / count,
            (self.frame_offset + st.run_start) * self.frame_s,
            (self.frame_offset + st.run_end) * self.frame_s,
        )

    def close(self, st: _State, chars: list[CharInfo]) -> None:
        """End the open run; a character run becomes a final CharInfo."""
        info = self.open_char(st)
        if info is not None:
            chars.append(info)
        st.run_char = None

    def feed(self, st: _State, log_probs: np.ndarray, chars: list[CharInfo], pieces: list[str]) -> None:
        """Advance ``st`` over the next frames, appending closed chars and new text pieces."""
        ids, starts, ends, sums = _runs(log_probs)
        base = st.frames
        for tok, start, end, total in zip(ids, starts, ends, sums, strict=True):
            if tok == st.last_id:  # only the first run can match: it continues the open run
                st.run_end = base + end
                st.run_sum += total
                continue
            self.close(st, chars)
            st.last_id = tok
            text = self.text(tok)
            if not text:
                continue
            if not text.strip():  # word delimiter
                st.pending_space = st.has_text
                continue
            if st.pending_space:
                pieces.append(" ")
                st.pending_space = False
            pieces.append(text)
            st.has_text = True
            st.run_char, st.run_start, st.run_end, st.run_sum = text, base + start, base + end, total
        if ends:
            st.frames = base + ends[-1]


def greedy_decode(
    log_probs: np.ndarray, vocab: CtcVocab, *, frame_offset: int = 0, frame_s: float = 0.02
) -> tuple[str, list[CharInfo]]:
    """Decode a whole ``[T, V]`` log-prob matrix; times are ``(frame_offset + frame) * frame_s``."""
    core = _Core(vocab, frame_s, frame_offset)
    state = _State()
    chars: list[CharInfo] = []
    pieces: list[str] = []
    core.feed(state, log_probs, chars, pieces)
    core.close(state, chars)
    return "".join(pieces), chars


class StreamingGreedyDecoder:
    """Incremental greedy decoding: committed frames are final, tail frames are only previewed.

    ``commit`` must receive consecutive frames (frame 0 = the first frame ever committed, shifted
    by ``frame_offset``). ``preview``/``hypothesis`` decode frames that directly follow the
    committed ones without touching the committed state, so a tail can be replaced freely.
    """

    def __init__(self, vocab: CtcVocab, frame_s: float = 0.02, *, frame_offset: int = 0) -> None:
        self._core = _Core(vocab, frame_s, frame_offset)
        self._state = _State()
        self._closed: list[CharInfo] = []
        self._text = ""

    def reset(self) -> None:
        """Forget everything (new utterance); the vocabulary text cache is kept."""
        self._state = _State()
        self._closed = []
        self._text = ""

    def commit(self, log_probs: np.ndarray) -> str:
        """Append committed frames; returns the text they added (possibly starting with a space)."""
        pieces: list[str] = []
        self._core.feed(self._state, log_probs, self._closed, pieces)
        added = "".join(pieces)
        self._text += added
        return added

    @property
    def committed_frames(self) -> int:
        """Number of frames committed so far."""
        return self._state.frames

    @property
    def text(self) -> str:
        """Committed text: never changes except by growing at the end."""
        return self._text

    @property
    def chars(self) -> list[CharInfo]:
        """Committed characters; the last one's span/confidence may still grow with its run."""
        open_char = self._core.open_char(self._state)
        return [*self._closed, open_char] if open_char is not None else list(self._closed)

    def _tail(self, log_probs: np.ndarray) -> tuple[str, list[CharInfo], int]:
        """Decode a tail on a copy of the state: (added text, chars from the open one on, #open)."""
        state = replace(self._state)
        chars: list[CharInfo] = []
        pieces: list[str] = []
        n_open = 1 if state.run_char is not None else 0
        self._core.feed(state, log_probs, chars, pieces)
        self._core.close(state, chars)
        return "".join(pieces), chars, n_open

    def preview(self, log_probs: np.ndarray) -> tuple[str, list[CharInfo]]:
        """Provisional text/chars of tail frames; ``text + preview text`` is the full hypothesis.

        A tail run continuing the last committed character adds no character (it only extends
        that character, which :meth:`hypothesis` reports); the preview text may start with a space.
        """
        text, chars, n_open = self._tail(log_probs)
        return text, chars[n_open:]

    def hypothesis(self, tail_log_probs: np.ndarray) -> tuple[str, list[CharInfo], int]:
        """Committed + provisional: ``(full_text, chars, stable_len)`` for a partial transcript.

        Equals ``greedy_decode`` of all committed frames followed by the tail;
        ``full_text[:stable_len]`` is the committed text.
        """
        text, chars, _ = self._tail(tail_log_probs)
        return self._text + text, self._closed + chars, len(self._text)
