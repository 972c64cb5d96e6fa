"""Streaming splitter: turns a dialogue handler's arbitrary text deltas into speakable TTS pieces.

TTS engines prosodise badly on fragments and add latency on long inputs, so reply text is cut at
clause/sentence punctuation. Decisions never depend on how the text was chunked: wherever a choice
needs the next character (is ``3.`` followed by ``14``? is ``[`` a prosody tag?) the splitter waits
for more text or :meth:`SpeakableSplitter.flush`.
"""

from __future__ import annotations

from dataclasses import dataclass

_CJK_PUNCT = frozenset("。！？；…⋯，、：")
_BOUNDARY = _CJK_PUNCT | frozenset(".!?;,:")
_CLOSERS = frozenset("\"'”’」』）)】》〉]}")
_OPENERS = frozenset("\"'“‘「『（(【《〈[{")
_NO_START = _BOUNDARY | _CLOSERS | frozenset("%‰")
_TAG_MAX = 32  # longest prosody tag body we wait for, e.g. "[uv_break]" has 8
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "fig", "approx"})


@dataclass
class SplitOptions:
    """Piece-length thresholds, in characters (a CJK character or Latin letter each count as one).

    * ``first_min_chars=5``: about one second of Mandarin (4-5 syllables/s) or one short English word
      ("Sure,"), so the first audio starts early yet is not a lone syllable.
    * ``min_chars=15``: ~3-4 s of Mandarin / ~1 s of English; long enough for natural prosody and to
      amortise per-request TTS overhead, short enough to synthesise piece N+1 while piece N plays.
    * ``max_chars=100``: hard cap (~25 s of Mandarin) that keeps requests inside what typical TTS
      models handle well when the text has no usable punctuation.
    """

    first_min_chars: int = 5
    min_chars: int = 15
    max_chars: int = 100

    def __post_init__(self) -> None:
        """Fail at construction, not mid-reply."""
        if self.first_min_chars < 1 or self.min_chars < 1:
            raise ValueError(f"min lengths must be >= 1, got {self.first_min_chars}, {self.min_chars}")
        if self.max_chars < max(self.first_min_chars, self.min_chars):
            raise ValueError(f"max_chars={self.max_chars} must be >= first_min_chars and min_chars")


def _is_cjk(ch: str) -> bool:
    """CJK ideographs and kana: scripts where a cut between any two characters is acceptable."""
    o = ord(ch)
    return 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FFFF


def _can_cut(a: str, b: str) -> bool:
    """Whether a forced (max_chars) cut between ``a`` and ``b`` keeps words, numbers and tags whole."""
    if b.isspace():
        return not a.isspace()
    if a.isspace() or b in _NO_START or a in _OPENERS or a.isdigit():
        return False
    return _is_cjk(a) or _is_cjk(b) or a == "]" or b == "["


def _tag_end(buf: str, i: int, final: bool) -> int | None:
    """End of the prosody tag starting at ``buf[i] == "["``; -1 if it is not one, None to wait for more."""
    j = i + 1
    while j < len(buf) and j - i <= _TAG_MAX and buf[j].isascii() and (buf[j].isalnum() or buf[j] == "_"):
        j += 1
    if j - i > _TAG_MAX:
        return -1
    if j == len(buf):
        return -1 if final else None
    return j + 1 if buf[j] == "]" and j > i + 1 else -1


def _is_abbreviation(buf: str, start: int, dot: int) -> bool:
    """Whether the word before ``buf[dot] == "."`` is an abbreviation ("e.g", "U.S", "J", "Mr")."""
    k = dot
    while k > start and dot - k < 12 and (buf[k - 1] == "." or ("a" <= buf[k - 1].lower() <= "z")):
        k -= 1
    word = buf[k:dot]
    return bool(word) and ("." in word or len(word) == 1 or word.lower() in _ABBREVIATIONS)


class SpeakableSplitter:
    """Incremental splitter; ``push`` is amortised O(len(delta) + pending), the pending text is short.

    A piece ends at boundary punctuation (plus any directly following punctuation, closing quotes and
    prosody tags: ``好的。[laugh]`` stays one piece, a tag after whitespace starts the next piece) once
    it has ``first_min_chars`` (first piece) or ``min_chars`` (later pieces) characters. Latin
    ``. ! ? ; : ,`` count only before whitespace, a CJK character or the end, which protects numbers
    ("3.14", "12:30", "1,000") and "e.g."; a few title abbreviations ("Mr.") never end a piece. If a
    piece reaches ``max_chars`` without a boundary it is cut at the last space or CJK-safe point.
    """

    def __init__(self, options: SplitOptions | None = None) -> None:
        self._opts = options or SplitOptions()
        self.reset()

    def reset(self) -> None:
        """Drop all pending text, e.g. when the reply is interrupted by barge-in."""
        self._buf = ""
        self._start = 0  # start of the current piece in _buf (first non-whitespace char)
        self._pos = 0  # next index to scan
        self._cut = -1  # latest safe forced-cut position in the current piece, -1 if none
        self._speech = False  # current piece has a letter/digit/CJK char outside tags
        self._first = True

    @property
    def pending(self) -> str:
        """Text received but not yet emitted (what would be lost if the reply were cut now)."""
        return self._buf[self._start :]

    def push(self, delta: str) -> list[str]:
        """Add a delta; return the pieces it completed (often [])."""
        self._buf += delta
        pieces = self._scan(final=False)
        if self._start:  # compact so the buffer only ever holds the current piece
            self._buf = self._buf[self._start :]
            self._pos -= self._start
            self._cut = self._cut - self._start if self._cut > self._start else -1
            self._start = 0
        return pieces

    def flush(self) -> list[str]:
        """End of reply: return the remaining pieces (including unpunctuated trailing text) and reset."""
        pieces = self._scan(final=True)
        rest = self._buf[self._start :].strip()
        if rest:
            pieces.append(rest)
        self.reset()
        return pieces

    def _emit(self, out: list[str], end: int, resume: int) -> None:
        """Close the current piece at ``end``; the next piece starts at ``resume``."""
        text = self._buf[self._start : end].strip()
        if text:
            out.append(text)
            self._first = False
        self._start = self._pos = resume
        self._cut = -1
        self._speech = False

    def _ready(self, length: int) -> bool:
        """Whether a boundary after ``length`` chars may end the current piece."""
        need = self._opts.first_min_chars if self._first else self._opts.min_chars
        return self._speech and length >= need

    def _boundary(self, i: int, final: bool) -> tuple[int, bool] | None:
        """Extent and validity of the punctuation run at ``i``; None while the next char is unknown."""
        buf, start = self._buf, self._start
        j, cjk = i + 1, buf[i] in _CJK_PUNCT
        while j < len(buf) and j - start < self._opts.max_chars:  # the cap also bounds runs like "！！！！"
            ch = buf[j]
            if ch == "[":
                end = _tag_end(buf, j, final)
                if end is None:
                    return None
                if end < 0:
                    break
                j = end
            elif ch in _BOUNDARY or ch in _CLOSERS:
                cjk = cjk or ch in _CJK_PUNCT
                j += 1
            else:
                break
        if j >= len(buf) and not final:
            return None
        nxt = buf[j] if j < len(buf) else ""
        if j == i + 1 and nxt.isdigit() and i > start and buf[i - 1].isdigit():
            return j, False  # "12：30", "1，000"
        if not cjk and nxt and not (nxt.isspace() or _is_cjk(nxt)):
            return j, False  # "3.14", "e.g", "$3.50"
        if buf[i] == "." and j == i + 1 and _is_abbreviation(buf, start, i):
            return j, False
        return j, True

    def _scan(self, final: bool) -> list[str]:
        """Advance the scan as far as the buffered text allows; return the pieces completed."""
        out: list[str] = []
        buf, opts = self._buf, self._opts
        i = self._pos
        while i < len(buf):
            ch = buf[i]
            if i == self._start:
                if ch.isspace():  # leading whitespace belongs to no piece
                    i = self._start = i + 1
                    continue
            else:
                if _can_cut(buf[i - 1], ch):
                    self._cut = i
                if i - self._start >= opts.max_chars:
                    cut = self._cut if self._cut > self._start else i
                    self._emit(out, cut, cut)
                    i = cut  # rescan the tail: it holds no cut point, so this stays amortised O(1)
                    continue
            if ch == "\n":
                if self._ready(i - self._start):
                    self._emit(out, i, i + 1)
                i += 1
            elif ch in _BOUNDARY:
                run = self._boundary(i, final)
                if run is None:
                    break
                end, valid = run
                if valid and self._ready(end - self._start):
                    self._emit(out, end, end)
                i = end
            elif ch == "[":
                end = _tag_end(buf, i, final)
                if end is None:
                    break
                i = end if end > 0 else i + 1
            else:
                self._speech = self._speech or ch.isalnum()
                i += 1
        self._pos = i
        return out


def split_speakable(text: str, options: SplitOptions | None = None) -> list[str]:
    """Split a complete reply in one call (same pieces as streaming it in any chunking)."""
    splitter = SpeakableSplitter(options)
    return splitter.push(text) + splitter.flush()
