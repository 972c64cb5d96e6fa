"""ChatTTS text front end: arbitrary zh/en text in, text the model can actually read out.

The model was trained on text with only CJK ideographs, A-Za-z, ``，。、,.``, spaces and control
tags. ChatTTS's own normalizer maps a few symbols and then silently deletes the rest (digits, ``?``,
``%``, ``$``, ``'``: "It costs $50" becomes "It costs  "). Here everything is either read out
(numbers → words, ``&`` → and/和), mapped to punctuation the model knows, removed because it carries
no sound (quotes, brackets, markdown marks), or removed *and reported* in
:attr:`NormalizedText.unsupported` (emoji, other scripts, unknown ``[tags]``).

Choices (pinned by tests):

* Numbers take the language of the letters around them (see :mod:`.numbers`); punctuation follows
  the dominant language: zh ``？！。`` → ``。``, ``，；：`` → ``，``; en ``?!`` → ``.``, ``;:`` → ``,``.
  Dashes and ellipses become a comma pause.
* English contractions are expanded (don't → do not, I'm → I am): the model's alphabet has no
  apostrophe and "dont"/"well"/"were" would be read as other words. Possessive 's keeps its sound
  (John's → Johns). Letter case is kept; the tokenizer lowercases.
* Accented Latin letters lose their accents (café → cafe); full-width forms are folded (NFKC).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from voiceloop.tts.chattts import numbers

PROSODY_TAGS = re.compile(
    r"\[(?:uv_break|v_break|lbreak|laugh(?:_[0-2])?|break_[0-7]|oral_[0-9]|speed_[0-9])\]"
)
_TAG_LIKE = re.compile(r"\[[A-Za-z][A-Za-z0-9_]{0,31}\]")
_CJK = "\u4e00-\u9fff"


class TextNormalizationError(ValueError):
    """A normalization option is invalid (unknown language, impossible split length)."""


@dataclass(frozen=True)
class NormalizedText:
    """Tokenizer-ready text plus what could not be represented in it."""

    text: str
    language: str
    unsupported: tuple[str, ...]


def _fold_table() -> dict[int, str]:
    """Accented Latin → ASCII, plus dashes, dots and zeros NFKC leaves alone (− ‐ ⋯ 〇 〜)."""
    table = {ord(k): v for k, v in {"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o"}.items()}
    table |= {ord(k): v for k, v in {"Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d"}.items()}
    table |= {ord("þ"): "th", ord("Þ"): "Th", ord("ı"): "i", ord("〇"): "零", ord("⁄"): "/", ord("〜"): "~"}
    table |= {ord("−"): "-", ord("‐"): "-", ord("‑"): "-", ord("⋯"): "...", ord("・"): "·"}
    for code in range(0xC0, 0x250):
        base = "".join(c for c in unicodedata.normalize("NFD", chr(code)) if c.isascii() and c.isalpha())
        if base and code not in table:
            table[code] = base
    return table


_FOLD = _fold_table()

# --- English contractions -------------------------------------------------------------------
_CONTRACTION = re.compile(r"(?<![A-Za-z])((?:[A-Za-z]+['’ʼ])*[A-Za-z]+)['’ʼ]([A-Za-z]+)(?![A-Za-z])")
_IRREGULAR = {"won't": "will not", "can't": "cannot", "shan't": "shall not", "ain't": "is not"}
_IRREGULAR |= {"let's": "let us", "o'clock": "o clock", "y'all": "you all", "ma'am": "madam"}
_SUFFIXES = {"re": "are", "m": "am", "ll": "will", "ve": "have", "d": "would"}
_IS_STEMS = frozenset(re.split(" ", "it he she that there here what where who how when why this"))


def _expand_contraction(m: re.Match[str]) -> str:
    """Only the last apostrophe can be a contraction; earlier ones separate sounds (rock'n'roll)."""
    head, _, stem = re.sub("['’ʼ]", " ", m[1]).rpartition(" ")
    return (head + " " if head else "") + _expand_suffix(stem, m[2])


def _expand_suffix(stem: str, suffix: str) -> str:
    low = suffix.lower()
    key = f"{stem}'{suffix}".lower()
    if key in _IRREGULAR:
        out = _IRREGULAR[key]
        out = out[0].upper() + out[1:] if stem[0].isupper() else out
    elif low == "t" and stem.lower().endswith("n") and len(stem) > 1:
        out = f"{stem[:-1]} not"
    elif low in _SUFFIXES:
        out = f"{stem} {_SUFFIXES[low]}"
    elif low == "s":
        return f"{stem} is" if stem.lower() in _IS_STEMS else stem + suffix  # John's → Johns
    else:
        return f"{stem} {suffix}"  # O'Brien → O Brien
    return out.upper() if suffix.isupper() and len(stem + suffix) > 2 else out


# --- e-mail addresses and web addresses -----------------------------------------------------
_ADDRESS = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9])"
    r"|(?:https?://|www\.)[!-~]+"
    r"|(?<![A-Za-z0-9@.-])[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|org|net|edu|gov|io|ai|cn|dev|app)"
    r"(?![A-Za-z0-9])(?:/[!-~]*)?"
)
_ADDRESS_WORDS = {"zh": {".": "点", "@": "艾特", "/": "斜杠", ":": "冒号"}}
_ADDRESS_WORDS["en"] = {".": " dot ", "@": " at ", "/": " slash ", ":": " colon "}


def _speak_address(m: re.Match[str], lang: str) -> str:
    core = m.group().rstrip(".,;:!?)'\"")
    tail = m.group()[len(core) :]
    core = re.sub(r"^https?://", "", core)
    words = _ADDRESS_WORDS[lang]
    spoken = re.sub(r"[^A-Za-z0-9]", lambda c: words.get(c.group(), " "), core)
    return (spoken if lang == "zh" else f" {spoken} ") + tail


# --- symbols and punctuation ----------------------------------------------------------------
_PAUSE = ", "
_SYMBOL_WORDS = {"&": ("和", "and"), "+": ("加", "plus"), "=": ("等于", "equals"), "@": ("艾特", "at")}
_SYMBOL_WORDS |= {"±": ("正负", "plus or minus"), "×": ("乘", "times"), "÷": ("除以", "divided by")}
_SYMBOL_WORDS |= {"%": ("百分号", "percent"), "‰": ("千分号", "per mille"), "$": ("美元", "dollars")}
_SYMBOL_WORDS |= {"€": ("欧元", "euros"), "£": ("英镑", "pounds"), "¥": ("元", "yuan")}
_SYMBOL_WORDS |= {"°": ("度", "degrees")}
_SYMBOL_WORDS |= {"<": ("小于", "less than"), ">": ("大于", "greater than")}
_SYMBOL_WORDS |= {"<=": ("小于等于", "at most"), ">=": ("大于等于", "at least")}
_SILENT = "\"'“”‘’„‟«»‹›「」『』〝〞〟()\\[\\]{}<>《》〈〉【】〔〕〖〗*#~^`\\\\"
_SYMBOL = re.compile(
    rf"(?P<compare>\s[<>]=?\s)|(?P<word>[&+=@±×÷%‰$€£¥°])"
    rf"|(?P<pause>\.{{2,}}|\s-\s|--+|[—–―|•]|-(?![A-Za-z{_CJK}])(?<![A-Za-z{_CJK}]-))"
    rf"|(?P<space>-|(?<=[A-Za-z])\.(?=[A-Za-z])|[/·_]|[{_SILENT}])"
)
_PUNCT = {
    "zh": str.maketrans({".": "。", "!": "。", "?": "。", ",": "，", ";": "，", ":": "，", "¡": "", "¿": ""}),
    "en": str.maketrans({"。": ".", "!": ".", "?": ".", ";": ",", ":": ",", "、": ",", "¡": "", "¿": ""}),
}


def _speak_symbol(m: re.Match[str], lang: str) -> str:
    """Symbols read as words, dashes and ellipses as a pause, joiners and silent marks as a space."""
    if m.lastgroup in ("compare", "word"):
        zh, en = _SYMBOL_WORDS[m.group().strip()]
        return zh if lang == "zh" else f" {en} "
    return _PAUSE if m.lastgroup == "pause" else " "


def detect_language(text: str) -> str:
    """Dominant language: CJK ideographs vs English words; ties and letterless text count as zh."""
    cjk = len(re.findall(f"[{_CJK}]", text))
    words = len(re.findall(r"[A-Za-z]+", text))
    return "en" if words > cjk else "zh"


def _speakable(text: str, lang: str) -> str:
    """One tag-free stretch of text → words and model punctuation (unsupported characters left in)."""
    text = _CONTRACTION.sub(_expand_contraction, text)
    text = _ADDRESS.sub(lambda m: _speak_address(m, lang), text)
    text = numbers.expand(text, lang)
    text = _SYMBOL.sub(lambda m: _speak_symbol(m, lang), text)
    return text.translate(_PUNCT[lang])


# --- the final filter and tidy-up -----------------------------------------------------------
_KEEP, _DROP, _SILENT_CHAR = 0, 1, 2
_MODEL_CHARS = re.compile(rf"[{_CJK}A-Za-z，。、,. ]")
_SPACES = re.compile(r"\s+")
_CJK_GAP = re.compile(rf"(?<=[{_CJK}]) (?=[{_CJK}])")
_SPACE_PUNCT = re.compile(r" ?([，。、]) ?| ([,.])")
_PUNCT_RUN = re.compile(r"[，。、,.](?: ?[，。、,.])+")
_LEADING = re.compile(r"^[ ，。、,.]+")
_GLUED = re.compile(r"(?<=[,.])(?=[A-Za-z])")  # "A.pm" would read as an abbreviation next time


def _judge(ch: str, is_known: Callable[[str], bool] | None) -> int:
    if ch.isspace():
        return _KEEP
    if unicodedata.category(ch) in ("Cf", "Mn", "Me"):  # joiners, variation selectors, stray accents
        return _SILENT_CHAR
    if _MODEL_CHARS.match(ch) and (is_known is None or is_known(ch)):
        return _KEEP
    return _DROP


def _filter(
    text: str, is_known: Callable[[str], bool] | None, verdicts: dict[str, int], dropped: dict[str, None]
) -> str:
    """Keep what the model can say; record everything else, in order, once."""
    out: list[str] = []
    for ch in text:
        verdict = verdicts.get(ch)
        if verdict is None:
            verdict = verdicts[ch] = _judge(ch, is_known)
        if verdict == _KEEP:
            out.append(ch)
        elif verdict == _DROP:
            dropped[ch] = None
            out.append(" ")
    return "".join(out)


def _one_mark(m: re.Match[str]) -> str:
    run = m.group()
    return "。" if "。" in run else "." if "." in run else run[0]


def _tidy(text: str) -> str:
    """Collapse whitespace and punctuation runs; no leading punctuation (tags are never touched)."""
    text = _SPACES.sub(" ", text)
    text = _CJK_GAP.sub("", text)
    text = _SPACE_PUNCT.sub(lambda m: m[1] or m[2], text)
    text = _GLUED.sub(" ", _PUNCT_RUN.sub(_one_mark, text))
    return _LEADING.sub("", text).strip()


def normalize(
    text: str, *, language: str | None = None, is_known: Callable[[str], bool] | None = None
) -> NormalizedText:
    """Text → what the ChatTTS tokenizer should get; prosody tags pass through byte for byte.

    ``language`` ("zh"/"en") overrides the detected dominant language (punctuation style and the
    reading of numbers with no letters nearby). ``is_known(ch)`` tells whether the tokenizer can
    represent a character; unknown ones are removed and reported, like emoji and unknown ``[tags]``.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize() needs str, got {type(text).__name__}")
    if language not in (None, "zh", "en"):
        raise TextNormalizationError(f"language must be 'zh', 'en' or None, got {language!r}")
    text = unicodedata.normalize("NFKC", text).translate(_FOLD)
    segments: list[tuple[str, str]] = []  # (kind, text), kind in "text", "tag", "unknown"
    pos = 0
    for m in _TAG_LIKE.finditer(text):
        segments.append(("text", text[pos : m.start()]))
        segments.append(("tag" if PROSODY_TAGS.fullmatch(m.group()) else "unknown", m.group()))
        pos = m.end()
    segments.append(("text", text[pos:]))
    lang = language or detect_language(" ".join(s for kind, s in segments if kind == "text"))
    dropped: dict[str, None] = {}
    verdicts: dict[str, int] = {}
    out: list[str] = []
    for kind, part in segments:
        if kind == "tag":
            out.append(part)
        elif kind == "unknown":
            dropped[part] = None
            out.append(" ")
        elif part:
            out.append(_filter(_speakable(part, lang), is_known, verdicts, dropped))
    return NormalizedText(_tidy("".join(out)), lang, tuple(dropped))


# --- sentence splitting ---------------------------------------------------------------------
_CLOSERS = "\"'”’」』)）》】\\]"
_SENTENCE_END = re.compile(rf"(?:[。！？!?]+|\.+(?=\s|$|[{_CJK}\"'”’」』)）]))[{_CLOSERS}]*|\n+")
_CLAUSE_END = re.compile(rf"(?:[，、；：…—]|[,;:](?![0-9])|--)+[{_CLOSERS}]*")
_ATOM = re.compile(rf"\[[A-Za-z][A-Za-z0-9_]{{0,31}}\]|\s+|[{_CJK}][^\w\s\[]*|[^\s\[{_CJK}]+|\[")
_ABBREVIATIONS = frozenset(re.split(" ", "mr mrs ms dr prof st jr sr vs etc eg ie fig no inc ltd co approx"))


def _is_sentence_end(text: str, m: re.Match[str]) -> bool:
    """A single "." after an abbreviation or an initial ("Mr.", "e.g.", "J.") does not end a sentence."""
    if m.group() != ".":
        return True
    word = re.search(r"([A-Za-z]+)\.?$", text[max(0, m.start() - 12) : m.start()])
    return not word or (len(word[1]) > 1 and word[1].lower() not in _ABBREVIATIONS)


def _cut(
    text: str, marks: re.Pattern[str], keep: Callable[[str, re.Match[str]], bool] | None = None
) -> list[str]:
    out: list[str] = []
    pos = 0
    for m in marks.finditer(text):
        if m.end() > pos and (keep is None or keep(text, m)):
            out.append(text[pos : m.end()])
            pos = m.end()
    return [*out, text[pos:]] if pos < len(text) else out


def _units(text: str) -> list[str]:
    """Unbreakable pieces: a word or one CJK character with its trailing marks and spaces; a tag
    sticks to the word it touches (the next one, or the previous one when a space follows it)."""
    units: list[str] = []
    tags = ""
    for atom in _ATOM.findall(text):
        if atom.startswith("[") and atom.endswith("]") and len(atom) > 2:
            tags += atom
        elif atom.isspace():
            attach = tags + atom
            tags = ""
            if units:
                units[-1] += attach
            else:
                units.append(attach)
        else:
            units.append(tags + atom)
            tags = ""
    if tags:
        if units:
            units[-1] += tags
        else:
            units.append(tags)
    return units


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Greedily join consecutive parts while they fit; parts too long are cut between units."""
    out: list[str] = []
    current = ""
    for part in parts:
        for unit in [part] if len(part.strip()) <= max_chars else _units(part):
            if current.strip() and len((current + unit).strip()) > max_chars:
                out.append(current)
                current = unit
            else:
                current += unit
    return [*out, current] if current else out


def _speakable_piece(piece: str) -> bool:
    return any(ch.isalnum() for ch in _TAG_LIKE.sub("", piece))


def split_sentences(text: str, max_chars: int = 100) -> list[str]:
    """Cut text into pieces of at most ``max_chars``: at every sentence end, then at clause marks,
    then between words (never inside a word or a [tag]; a single longer word stays whole).

    Pieces are stripped; pieces with nothing to say (only tags or marks) join their neighbour.
    Works on raw or normalized text.
    """
    if max_chars < 1:
        raise TextNormalizationError(f"max_chars must be >= 1, got {max_chars}")
    pieces: list[str] = []
    for sentence in _cut(text, _SENTENCE_END, _is_sentence_end):
        if len(sentence.strip()) <= max_chars:
            pieces.append(sentence)
        else:
            pieces += _pack(_cut(sentence, _CLAUSE_END), max_chars)
    merged: list[str] = []
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        if merged and not (_speakable_piece(piece) and _speakable_piece(merged[-1])):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged
