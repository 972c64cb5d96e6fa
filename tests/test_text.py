"""Tests for voiceloop.text: speakable splitting of streamed reply text for TTS."""

from __future__ import annotations

import random
import re

import pytest

from voiceloop.text import SpeakableSplitter, SplitOptions, split_speakable

EAGER = SplitOptions(first_min_chars=1, min_chars=1, max_chars=100)  # split at every boundary
TAGS = ["[uv_break]", "[laugh]", "[laugh_0]", "[break_4]", "[oral_2]", "[speed_5]", "[lbreak]"]

CORPUS = [
    "你好，我是你的语音助手。今天天气很好，阳光明媚，我们一起去公园散步吧！你想去吗？",
    "Hello there, how are you doing today? I hope everything is fine. Let me know if you need anything.",
    "我们用 Python 写代码, 它很 easy. Then we test it! 测试通过了。好的……再见！",
    "圆周率约等于3.14，人口约1.5亿。会议在12：30开始；费用是$3.50，打5折即50%。",
    "Pi is 3.14159, the total is 1,000,000 people. Meet at 12:30, pay $3.50 (50% off). Done.",
    "好的。[laugh]我们出发吧[uv_break]，今天[speed_5]真开心！[lbreak] Next [oral_2]one. [break_4]Bye!",
    'Use a fruit, e.g. an apple. Mr. Smith agrees, i.e. he said "yes." Then J. K. Rowling left.',
    "第一行\n第二行比较长一些，需要继续说下去\n\n- item one\n- item two is here\n[see below] ok.",
    "这是一段没有任何标点符号的很长很长的中文文本" * 8,
    " ".join(f"word{i}" for i in range(60)) + " end",
    "   leading spaces, trailing spaces.   \n\n  ",
    "Wait... what?! Really?? 真的吗？！」他说。“当然。”",
]
OPTION_SETS = [SplitOptions(), EAGER, SplitOptions(first_min_chars=3, min_chars=8, max_chars=30)]


def squash(text: str) -> str:
    """Remove all whitespace: preservation is checked modulo whitespace at piece boundaries."""
    return re.sub(r"\s+", "", text)


def stream(text: str, sizes: list[int], options: SplitOptions | None = None) -> list[str]:
    """Push ``text`` in deltas of the given sizes (cycled), then flush."""
    splitter = SpeakableSplitter(options)
    pieces: list[str] = []
    pos = k = 0
    while pos < len(text):
        size = sizes[k % len(sizes)]
        pieces += splitter.push(text[pos : pos + size])
        pos, k = pos + size, k + 1
    return pieces + splitter.flush()


def test_chinese_sentences_and_clauses() -> None:
    text = CORPUS[0]
    assert split_speakable(text) == [
        "你好，我是你的语音助手。",
        "今天天气很好，阳光明媚，我们一起去公园散步吧！",
        "你想去吗？",
    ]
    assert split_speakable(text, EAGER) == [
        "你好，",
        "我是你的语音助手。",
        "今天天气很好，",
        "阳光明媚，",
        "我们一起去公园散步吧！",
        "你想去吗？",
    ]


def test_english_sentences() -> None:
    assert split_speakable(CORPUS[1]) == [
        "Hello there,",
        "how are you doing today?",
        "I hope everything is fine.",
        "Let me know if you need anything.",
    ]


def test_mixed_language() -> None:
    pieces = split_speakable(CORPUS[2], EAGER)
    assert pieces == [
        "我们用 Python 写代码,",
        "它很 easy.",
        "Then we test it!",
        "测试通过了。",
        "好的……",
        "再见！",
    ]


def test_first_piece_is_short_later_pieces_merge() -> None:
    assert split_speakable("Sure, I can help. It is easy, really easy, trust me.")[:2] == [
        "Sure,",
        "I can help. It is easy,",
    ]
    opts = SplitOptions(first_min_chars=3)
    assert split_speakable("好的，我马上帮你查一下，明天北京的天气情况，请稍等。", opts) == [
        "好的，",
        "我马上帮你查一下，明天北京的天气情况，",
        "请稍等。",
    ]


NUMBERS = ["3.14", "3.14159", "1.5亿", "12：30", "12:30", "$3.50", "50%", "1,000,000"]


@pytest.mark.parametrize("token", NUMBERS)
def test_numbers_never_split(token: str) -> None:
    for text in CORPUS[3:5]:
        if token in text:
            for opts in OPTION_SETS:
                assert any(token in piece for piece in split_speakable(text, opts))


def test_latin_punctuation_waits_for_next_delta() -> None:
    splitter = SpeakableSplitter(EAGER)
    assert splitter.push("Pi is about 3.") == []
    assert splitter.push("14 and e is 2.71.") == []
    assert splitter.push(" Next") == ["Pi is about 3.14 and e is 2.71."]
    assert splitter.flush() == ["Next"]


def test_abbreviations_not_split() -> None:
    pieces = split_speakable(CORPUS[6], EAGER)
    assert "Use a fruit," in pieces
    assert "e.g. an apple." in pieces
    assert "Mr. Smith agrees," in pieces
    assert any("J. K. Rowling left." in piece for piece in pieces)


def test_tags_kept_whole_and_verbatim() -> None:
    text = CORPUS[5]
    for opts in OPTION_SETS:
        pieces = split_speakable(text, opts)
        for tag in re.findall(r"\[\w+\]", text):
            assert sum(piece.count(tag) for piece in pieces) == text.count(tag)
        assert squash("".join(pieces)) == squash(text)
    # A tag directly after punctuation stays with the piece that punctuation ends.
    assert split_speakable("好的。[laugh]我们出发吧。", EAGER) == ["好的。[laugh]", "我们出发吧。"]
    # After whitespace it starts the next piece.
    assert split_speakable("Okay. [laugh] Let us go.", EAGER) == ["Okay.", "[laugh] Let us go."]


def test_tag_split_across_deltas() -> None:
    deltas = [
        "你好[uv_",
        "break]，今天[la",
        "ugh]很开心。[lbr",
        "eak]我们走吧[",
        "speed_",
        "5]！好[",
        "oral_2]",
        "的。",
    ]
    splitter = SpeakableSplitter(EAGER)
    pieces = [p for d in deltas for p in splitter.push(d)] + splitter.flush()
    assert pieces == [
        "你好[uv_break]，",
        "今天[laugh]很开心。[lbreak]",
        "我们走吧[speed_5]！",
        "好[oral_2]的。",
    ]
    assert pieces == split_speakable("".join(deltas), EAGER)


def test_non_tag_brackets_are_ordinary_text() -> None:
    assert split_speakable("See [the notes below]. Then go.", EAGER) == ["See [the notes below].", "Then go."]
    assert split_speakable("Unclosed [tag", EAGER) == ["Unclosed [tag"]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_chunking_invariance(options: SplitOptions) -> None:
    rng = random.Random(20240601)
    for text in [*CORPUS, "".join(CORPUS)]:
        expected = split_speakable(text, options)
        assert stream(text, [1], options) == expected
        for _ in range(40):
            sizes = [rng.randint(1, 12) for _ in range(16)]
            assert stream(text, sizes, options) == expected, (text, sizes)


def test_max_chars_cap_chinese_without_punctuation() -> None:
    text = CORPUS[8]
    pieces = split_speakable(text, SplitOptions(max_chars=30))
    assert len(pieces) > 1
    assert all(len(piece) <= 30 for piece in pieces)
    assert "".join(pieces) == text


def test_max_chars_cap_english_splits_at_spaces() -> None:
    text = CORPUS[9]
    pieces = split_speakable(text, SplitOptions(max_chars=40))
    assert len(pieces) > 1
    assert all(len(piece) <= 40 for piece in pieces)
    assert " ".join(pieces) == text  # every cut fell on a space: no word was broken


def test_flush_returns_trailing_unpunctuated_text() -> None:
    splitter = SpeakableSplitter()
    assert splitter.push("今天天气很好。明天") == ["今天天气很好。"]
    assert splitter.pending == "明天"
    assert splitter.flush() == ["明天"]
    assert splitter.flush() == []


@pytest.mark.parametrize("text", ["", " ", "  \n\t  \n", "\u3000 "])
def test_whitespace_only_gives_nothing(text: str) -> None:
    assert split_speakable(text) == []
    assert stream(text, [1]) == []


@pytest.mark.parametrize("options", OPTION_SETS)
def test_text_preserved(options: SplitOptions) -> None:
    for text in CORPUS:
        pieces = split_speakable(text, options)
        assert all(piece and piece == piece.strip() for piece in pieces)
        assert squash("".join(pieces)) == squash(text)


def test_reset_discards_pending_text() -> None:
    splitter = SpeakableSplitter()
    splitter.push("这句话被打断了")
    splitter.reset()
    assert splitter.pending == ""
    assert splitter.push("新的回复。") == []  # waits: a closing quote or tag may still follow "。"
    assert splitter.flush() == ["新的回复。"]


def test_pending_buffer_stays_bounded() -> None:
    splitter = SpeakableSplitter()
    text = "这是测试文本，没有什么特别的意思。" * 2000 + "unbroken" * 500
    emitted = 0
    for ch in text:
        emitted += len(splitter.push(ch))
        assert len(splitter.pending) <= 100 + 2
    assert emitted > 1000


def test_invalid_options_rejected() -> None:
    with pytest.raises(ValueError):
        SplitOptions(first_min_chars=0)
    with pytest.raises(ValueError):
        SplitOptions(min_chars=50, max_chars=20)
