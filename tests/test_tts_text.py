"""Tests for the ChatTTS text front end: numbers read out, punctuation mapped, tags kept, nothing lost."""

from __future__ import annotations

import random
import re

import pytest

from voiceloop.tts.chattts.normalize import (
    PROSODY_TAGS,
    NormalizedText,
    TextNormalizationError,
    normalize,
    split_sentences,
)
from voiceloop.tts.chattts.numbers import en_int, en_ordinal, en_year, zh_int

# What the model was trained on: CJK ideographs, A-Za-z, ，。、,. and spaces (plus tags).
MODEL_TEXT = re.compile(r"[\u4e00-\u9fffA-Za-z，。、,. ]*")


def text_of(raw: str, **kwargs: object) -> str:
    return normalize(raw, **kwargs).text  # type: ignore[arg-type]


def squash(text: str) -> str:
    """Content modulo whitespace (split pieces are stripped)."""
    return re.sub(r"\s+", "", text)


def assert_model_text(text: str) -> None:
    """Only characters the model knows, once the tags are taken out."""
    bare = PROSODY_TAGS.sub("", text)
    assert MODEL_TEXT.fullmatch(bare), f"unexpected characters in {text!r}"


# --- number words ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "zh", "en"),
    [
        (0, "零", "zero"),
        (2, "二", "two"),
        (10, "十", "ten"),
        (15, "十五", "fifteen"),
        (22, "二十二", "twenty two"),
        (101, "一百零一", "one hundred one"),
        (110, "一百一十", "one hundred ten"),
        (123, "一百二十三", "one hundred twenty three"),
        (200, "两百", "two hundred"),
        (1001, "一千零一", "one thousand one"),
        (1010, "一千零一十", "one thousand ten"),
        (1200, "一千二百", "one thousand two hundred"),
        (2000, "两千", "two thousand"),
        (10010, "一万零一十", "ten thousand ten"),
        (12000, "一万两千", "twelve thousand"),
        (20000, "两万", "twenty thousand"),
        (100000, "十万", "one hundred thousand"),
        (1000000, "一百万", "one million"),
        (100000001, "一亿零一", "one hundred million one"),
        (100010000, "一亿零一万", "one hundred million ten thousand"),
        (1234567890, "十二亿三千四百五十六万七千八百九十", None),
        (10**12, "一万亿", "one trillion"),
        (-7, "负七", "minus seven"),
    ],
)
def test_cardinals(n: int, zh: str, en: str | None) -> None:
    assert zh_int(n) == zh
    if en is not None:
        assert en_int(n) == en


def test_huge_numbers_fall_back_to_digits() -> None:
    assert zh_int(10**16) == "一" + "零" * 16
    assert en_int(10**21).startswith("one zero zero")


ORDINALS = {1: "first", 2: "second", 3: "third", 5: "fifth", 8: "eighth", 9: "ninth", 11: "eleventh"}
ORDINALS |= {
    12: "twelfth",
    20: "twentieth",
    21: "twenty first",
    101: "one hundred first",
    1000: "one thousandth",
}
YEARS = {2026: "twenty twenty six", 1905: "nineteen oh five", 1900: "nineteen hundred", 2000: "two thousand"}
YEARS |= {
    2005: "two thousand five",
    2010: "twenty ten",
    1066: "ten sixty six",
    999: "nine hundred ninety nine",
}


@pytest.mark.parametrize(("n", "word"), ORDINALS.items())
def test_en_ordinals(n: int, word: str) -> None:
    assert en_ordinal(n) == word


@pytest.mark.parametrize(("year", "words"), YEARS.items())
def test_en_years(year: int, words: str) -> None:
    assert en_year(year) == words


# --- Chinese text ---------------------------------------------------------------------------

ZH_CASES = [
    # integers, separators, negatives, decimals
    ("我有123个", "我有一百二十三个"),
    ("我有1,234,567元", "我有一百二十三万四千五百六十七元"),
    ("气温-3度", "气温负三度"),
    ("圆周率是3.14", "圆周率是三点一四"),
    ("还剩0.5", "还剩零点五"),
    ("人口约1.5亿", "人口约一点五亿"),
    # 两 where Mandarin needs it, 二 elsewhere
    ("我有2个苹果", "我有两个苹果"),
    ("现在2点了", "现在两点了"),
    ("他今年2岁", "他今年两岁"),
    ("共200人", "共两百人"),
    ("花了2000元", "花了两千元"),
    ("第2名", "第二名"),
    ("2年级", "二年级"),
    ("2月", "二月"),
    ("12个", "十二个"),
    # percentages
    ("增长了25%", "增长了百分之二十五"),
    ("涨了12.5%", "涨了百分之十二点五"),
    ("下降-5%", "下降负百分之五"),
    ("占10-20%", "占百分之十到百分之二十"),
    # currency
    ("价格是$50", "价格是五十美元"),
    ("只要¥30", "只要三十元"),
    ("只要¥30元", "只要三十元"),
    ("票价€5", "票价五欧元"),
    ("花了£3", "花了三英镑"),
    ("共50元", "共五十元"),
    ("一共5.99美元", "一共五点九九美元"),
    ("一共$5.99", "一共五点九九美元"),
    ("只要$1.00", "只要一美元"),
    ("卖US$20", "卖二十美元"),
    ("约$5-10", "约五到十美元"),
    # dates and years (digit by digit, with 一)
    ("会议在2026-11-26", "会议在二零二六年十一月二十六日"),
    ("2026/11/26出发", "二零二六年十一月二十六日出发"),
    ("今天是2026年11月26日", "今天是二零二六年十一月二十六日"),
    ("1990年代", "一九九零年代"),
    ("2019-2026年", "二零一九到二零二六年"),
    # times
    ("现在是3:30", "现在是三点三十分"),
    ("时间是15:30:05", "时间是十五点三十分零五秒"),
    ("凌晨2:00", "凌晨两点"),
    ("约2:05到", "约两点零五分到"),
    ("3:30pm见", "下午三点三十分见"),
    ("9:15am开会", "上午九点十五分开会"),
    ("晚上9pm见", "晚上九点见"),
    ("下午3:30pm到", "下午三点三十分到"),
    # phone numbers, codes, long digit strings: digit by digit with 幺
    ("电话138-1234-5678", "电话幺三八，幺二三四，五六七八"),
    ("手机号码是13812345678", "手机号码是幺三八幺二三四五六七八"),
    ("验证码是123456", "验证码是幺二三四五六"),
    ("编号007", "编号零零七"),
    ("拨打+86 138 1234 5678", "拨打加八六，幺三八，幺二三四，五六七八"),
    # fractions, ratios, ranges, arithmetic, units, ordinals
    ("1/2的人", "二分之一的人"),
    ("比分3:2", "比分三比二"),
    ("3-5天", "三到五天"),
    ("10~20人", "十到二十人"),
    ("1+1=2", "一加一等于二"),
    ("3 - 5", "三减五"),
    ("6÷2", "六除以二"),
    ("跑了5公里", "跑了五公里"),
    ("今天25°C", "今天二十五摄氏度"),
    ("气温-5°C", "气温零下五摄氏度"),
    ("重10kg", "重十公斤"),
    ("得了1st", "得了第一"),
    ("版本1.2.3", "版本一点二点三"),
    # mixed scripts
    ("我用iPhone 15打电话", "我用iPhone 十五打电话"),
    ("5G网络", "五G网络"),
    ("3D电影", "三D电影"),
    ("A4纸", "A四纸"),
]


@pytest.mark.parametrize(("raw", "expected"), ZH_CASES)
def test_chinese_readings(raw: str, expected: str) -> None:
    result = normalize(raw)
    assert result.text == expected
    assert result.language == "zh"
    assert result.unsupported == ()


# --- English text ---------------------------------------------------------------------------

EN_CASES = [
    ("I have 123 apples", "I have one hundred twenty three apples"),
    ("I have 1,234,567", "I have one million two hundred thirty four thousand five hundred sixty seven"),
    ("It is -3 degrees", "It is minus three degrees"),
    ("Pi is 3.14", "Pi is three point one four"),
    ("Only .5 left", "Only zero point five left"),
    ("Up 25%", "Up twenty five percent"),
    ("Between 5 to 10%", "Between five to ten percent"),
    ("It costs $50", "It costs fifty dollars"),
    ("It costs $1", "It costs one dollar"),
    ("It costs $5.99", "It costs five dollars and ninety nine cents"),
    ("It costs $0.50", "It costs fifty cents"),
    ("Only 5.99 dollars", "Only five dollars and ninety nine cents"),
    ("It costs 30 USD", "It costs thirty dollars"),
    ("Worth $3.5M", "Worth three point five million dollars"),
    ("Worth $1,000,000", "Worth one million dollars"),
    ("Paid €5.50", "Paid five euros and fifty cents"),
    ("Paid £3.01", "Paid three pounds and one penny"),
    ("Paid ¥30", "Paid thirty yuan"),
    ("Paid US$20", "Paid twenty US dollars"),
    ("Lost -$5", "Lost minus five dollars"),
    ("From $5-10", "From five to ten dollars"),
    ("From $1.50-$2.50", "From one dollar and fifty cents to two dollars and fifty cents"),
    ("The date is 2026-11-26", "The date is November twenty sixth, twenty twenty six"),
    ("On 11/26/2026 we met", "On November twenty sixth, twenty twenty six we met"),
    ("On 26/11/2026 we met", "On November twenty sixth, twenty twenty six we met"),
    ("Born on Nov 26, 2026", "Born on November twenty sixth, twenty twenty six"),
    ("See you on March 3rd", "See you on March third"),
    ("In 2026 we moved", "In twenty twenty six we moved"),
    ("Since 1905 it stood", "Since nineteen oh five it stood"),
    ("From 2019-2026 it grew", "From twenty nineteen to twenty twenty six it grew"),
    ("The 1990s and the '80s", "The nineteen nineties and the eighties"),
    ("See you at 3:30", "See you at three thirty"),
    ("See you at 3:05", "See you at three oh five"),
    ("See you at 3:00", "See you at three o clock"),
    ("At 15:30:05 exactly", "At fifteen thirty and five seconds exactly"),
    ("Meet at 3:30pm", "Meet at three thirty p m"),
    ("Meet at 3 PM", "Meet at three p m"),
    ("Meet at 9 p.m. tomorrow", "Meet at nine p m tomorrow"),
    ("Call 138-1234-5678", "Call one three eight, one two three four, five six seven eight"),
    ("Call +1 (555) 123-4567", "Call plus one, five five five, one two three, four five six seven"),
    ("Room 101", "Room one zero one"),
    ("Code 0042", "Code zero zero four two"),
    ("ID 1234567890", "ID one two three four five six seven eight nine zero"),
    ("He came 1st, she came 2nd", "He came first, she came second"),
    ("Our 21st and 3rd try", "Our twenty first and third try"),
    ("It is 1/2 full", "It is one half full"),
    ("About 3/4 of them", "About three quarters of them"),
    ("Nearly 5/8 done", "Nearly five eighths done"),
    ("Win 3:2", "Win three to two"),
    ("Takes 3-5 days", "Takes three to five days"),
    ("So 2 + 2 = 4", "So two plus two equals four"),
    ("A 1920x1080 screen", "A one thousand nine hundred twenty by one thousand eighty screen"),
    ("It is 5 km away", "It is five kilometers away"),
    ("Just 1 km away", "Just one kilometer away"),
    ("It is 25°C", "It is twenty five degrees Celsius"),
    ("Wait 100ms", "Wait one hundred milliseconds"),
    ("Version 1.2.3", "Version one point two point three"),
    ("The #1 pick", "The number one pick"),
    ("COVID-19 is bad", "COVID nineteen is bad"),
    ("My iPhone15 and MP3", "My iPhone fifteen and MP three"),
]


@pytest.mark.parametrize(("raw", "expected"), EN_CASES)
def test_english_readings(raw: str, expected: str) -> None:
    result = normalize(raw)
    assert result.text == expected
    assert result.language == "en"
    assert result.unsupported == ()


# --- the upstream normalizer bugs -----------------------------------------------------------


def test_upstream_bug_english() -> None:
    """ChatTTS's normalizer gives "It costs  at ,pm, OK Dont worry." here."""
    result = normalize("It costs $50 at 3:30pm, OK? Don't worry!")
    assert result.text == "It costs fifty dollars at three thirty p m, OK. Do not worry."
    assert result == NormalizedText(result.text, "en", ())


def test_upstream_bug_chinese() -> None:
    """ChatTTS's normalizer gives "今年月日，温度是。度。你好吗" here."""
    result = normalize("今年4月15日，温度是25.5度！你好吗？")
    assert result.text == "今年四月十五日，温度是二十五点五度。你好吗。"
    assert result == NormalizedText(result.text, "zh", ())


# --- punctuation, symbols, contractions -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("你好吗？我很好！", "你好吗。我很好。"),
        ("注意：明天；后天", "注意，明天，后天"),
        ("苹果、香蕉", "苹果、香蕉"),
        ("你好,世界.再见!", "你好，世界。再见。"),
        ("好的……再见——明天", "好的，再见，明天"),
        ("他（张三）说：“好的”。", "他张三说，好的。"),
        ("《三体》很好看", "三体很好看"),
        ("真的吗？！", "真的吗。"),
        ("A&B公司", "A和B公司"),
        ("@张三 你好", "艾特张三你好"),
        ("访问www.baidu.com吧", "访问www点baidu点com吧"),
        ("**重点**内容", "重点内容"),
    ],
)
def test_chinese_punctuation_and_symbols(raw: str, expected: str) -> None:
    assert text_of(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Really? Yes! Fine; ok: go", "Really. Yes. Fine, ok, go"),
        ("Wait... what?!", "Wait, what."),
        ("wait - what -- really — yes", "wait, what, really, yes"),
        ('He said "yes" (maybe).', "He said yes maybe."),
        ("a well-known fact", "a well known fact"),
        ("Tom & Jerry", "Tom and Jerry"),
        ("C++ is fine", "C plus plus is fine"),
        ("if 3 < 5 then", "if three less than five then"),
        ("mail john.doe@example.com!", "mail john dot doe at example dot com."),
        ("the U.S. team", "the U S. team"),
        ("café naïve Zoë", "cafe naive Zoe"),
        ("ＡＢＣ１２３", "ABC one hundred twenty three"),
        ("  lots   of\n\tspace  ", "lots of space"),
        ("KEEP the Case", "KEEP the Case"),
    ],
)
def test_english_punctuation_and_symbols(raw: str, expected: str) -> None:
    assert text_of(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Don't go", "Do not go"),
        ("I can't, you won't", "I cannot, you will not"),
        ("I'm sure they're fine", "I am sure they are fine"),
        ("we'll see, I'd go, you've won", "we will see, I would go, you have won"),
        ("it's late, let's go", "it is late, let us go"),
        ("John's car, the students' books", "Johns car, the students books"),
        ("DON'T SHOUT", "DO NOT SHOUT"),
        ("Isn't it", "Is not it"),
        ("O'Brien's rock'n'roll", "O Briens rock n roll"),
        ("it’s curly", "it is curly"),
        ("at 5 o'clock", "at five o clock"),
    ],
)
def test_contractions_are_expanded(raw: str, expected: str) -> None:
    assert text_of(raw) == expected


# --- tags -----------------------------------------------------------------------------------

ALL_TAGS = ["[uv_break]", "[v_break]", "[lbreak]", "[laugh]"] + [f"[laugh_{i}]" for i in range(3)]
ALL_TAGS += [f"[break_{i}]" for i in range(8)] + [f"[oral_{i}]" for i in range(10)]
ALL_TAGS += [f"[speed_{i}]" for i in range(10)]


@pytest.mark.parametrize("tag", ALL_TAGS)
def test_every_prosody_tag_passes_through_next_to_cjk(tag: str) -> None:
    assert PROSODY_TAGS.fullmatch(tag)
    result = normalize(f"你好{tag}世界")
    assert result.text == f"你好{tag}世界"
    assert result.unsupported == ()


def test_tags_untouched_byte_for_byte() -> None:
    raw = "[speed_5]好的。[laugh]我们出发吧[uv_break]，今天真开心！[lbreak] Next [oral_2]one [break_4]"
    result = normalize(raw)
    expected = "[speed_5]好的。[laugh]我们出发吧[uv_break]，今天真开心。[lbreak] Next [oral_2]one [break_4]"
    assert result.text == expected
    assert [m.group() for m in PROSODY_TAGS.finditer(result.text)] == PROSODY_TAGS.findall(raw)


def test_tags_do_not_count_as_english_or_get_numbers() -> None:
    result = normalize("[uv_break][laugh][speed_5]你好3")
    assert result.language == "zh"
    assert result.text == "[uv_break][laugh][speed_5]你好三"


@pytest.mark.parametrize(
    ("raw", "text", "unsupported"),
    [
        ("你好[foo]世界", "你好世界", ("[foo]",)),
        ("Hi [Stts] there [laugh_9]", "Hi there", ("[Stts]", "[laugh_9]")),
        ("[UV_BREAK]ok[foo][foo]", "ok", ("[UV_BREAK]", "[foo]")),
        ("[break_8]好", "好", ("[break_8]",)),
    ],
)
def test_unknown_tags_removed_and_reported(raw: str, text: str, unsupported: tuple[str, ...]) -> None:
    result = normalize(raw)
    assert (result.text, result.unsupported) == (text, unsupported)


def test_bracketed_words_are_not_tags() -> None:
    assert normalize("see [the note] and [1]").text == "see the note and one"


# --- what cannot be said is reported, never silently dropped, never a crash -----------------


def test_emoji_and_other_scripts_reported_in_order_once() -> None:
    result = normalize("好的😀！Привет 😀 こんにちは👍")
    assert result.text == "好的。"
    assert result.unsupported == ("😀", "П", "р", "и", "в", "е", "т", "こ", "ん", "に", "ち", "は", "👍")


def test_emoji_joiners_and_variation_selectors_are_not_reported_separately() -> None:
    result = normalize("❤️ 👨\u200d👩\u200d👧 ok")
    assert result.text == "ok"
    assert result.unsupported == ("❤", "👨", "👩", "👧")


def test_is_known_removes_and_reports() -> None:
    known = set("你好世界，。")
    result = normalize("你好龘世界😀，", is_known=lambda ch: ch in known)
    assert result.text == "你好世界，"
    assert result.unsupported == ("龘", "😀")


def test_is_known_is_asked_once_per_character_and_never_about_tags() -> None:
    asked: list[str] = []

    def is_known(ch: str) -> bool:
        asked.append(ch)
        return True

    normalize("好好好[laugh]好", is_known=is_known)
    assert asked == ["好"]


def test_is_known_rejecting_everything_gives_empty_text() -> None:
    result = normalize("abc 你", is_known=lambda ch: False)
    assert result.text == ""
    assert result.unsupported == ("a", "b", "c", "你")


# --- language -------------------------------------------------------------------------------


def test_dominant_language_and_override() -> None:
    assert normalize("Hello world 你").language == "en"
    assert normalize("Hello 你好吗").language == "zh"
    assert normalize("").language == "zh"
    result = normalize("Hi! 3", language="zh")
    assert (result.language, result.text) == ("zh", "Hi。three")
    assert normalize("12", language="en").text == "twelve"
    assert normalize("12", language="zh").text == "十二"


def test_numbers_follow_local_context_in_mixed_text() -> None:
    result = normalize("The price is 100 dollars today, 价格是100元。")
    assert result.text == "The price is one hundred dollars today, 价格是一百元."
    assert normalize("我说 Version 2 is 好 3").text == "我说 Version two is 好三"


@pytest.mark.parametrize("bad", ["fr", "ZH", ""])
def test_bad_language_is_a_typed_error(bad: str) -> None:
    with pytest.raises(TextNormalizationError):
        normalize("hi", language=bad)
    assert issubclass(TextNormalizationError, ValueError)


def test_non_string_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        normalize(123)  # type: ignore[arg-type]


# --- edge inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "   ", "。。。", "!!!", "?", "……", "——", "“”", "()"])
def test_empty_and_punctuation_only(raw: str) -> None:
    result = normalize(raw)
    assert result.text == ""
    assert result.unsupported == ()


def test_only_a_tag() -> None:
    assert normalize("[laugh]").text == "[laugh]"


CORPUS = [
    "It costs $50 at 3:30pm, OK? Don't worry!",
    "今年4月15日，温度是25.5度！你好吗？",
    "我用iPhone 15打电话",
    "我们用 Python 写代码, 它很 easy. Then we test it! 测试通过了。好的……再见！",
    "圆周率约等于3.14，人口约1.5亿。会议在12：30开始；费用是$3.50，打5折即50%。",
    "Pi is 3.14159, the total is 1,000,000 people. Meet at 12:30, pay $3.50 (50% off). Done.",
    "好的。[laugh]我们出发吧[uv_break]，今天[speed_5]真开心！[lbreak] Next [oral_2]one. [break_4]Bye!",
    "Weird: 1e5, 0x1F, 3.4.5.6.7, 12:99, 99/99/9999, 2026-13-45, 1-2-3, ##5, $$5, 5%%, 1,2,3,4",
    "数学：3×4=12，10÷2=5，2^10=1024，√2≈1.414，π≈3.14，±5，≥3，≤4，≠0",
    "Ⅻ ① ½ ¼ ² ³ ™ © ® ℃ ℉ № § ¶ † ‡ • ‰ ‱ ∞ ∑ → ← ↑ ↓",
]


@pytest.mark.parametrize("raw", CORPUS)
def test_output_only_uses_model_characters_and_no_digit_survives(raw: str) -> None:
    result = normalize(raw)
    assert_model_text(result.text)
    assert not re.search(r"[0-9]", PROSODY_TAGS.sub("", result.text))
    assert len(set(result.unsupported)) == len(result.unsupported)


@pytest.mark.parametrize("raw", CORPUS)
def test_normalizing_twice_changes_nothing(raw: str) -> None:
    once = normalize(raw)
    assert normalize(once.text, language=once.language).text == once.text


def test_random_input_never_crashes_and_never_leaks() -> None:
    pool = list(
        "0123456789,.:;-/%$¥€£+=@&#*'\"()[]{}<>!?~^_ \n\taAbBmMpPsStTkKx你好年月日点个两元，。！？、；：“”…—"
    )
    pool += ["[laugh]", "[uv_break]", "[foo]", "😀", "é", "П", "\u200d", "°C", "km", "am", "pm", "Don't"]
    pool += ["1st", "2026-11-26", "3:30", "http://", "www.", ".com", " hello ", " world. "]
    rng = random.Random(0)
    for _ in range(500):
        raw = "".join(rng.choice(pool) for _ in range(rng.randint(0, 50)))
        result = normalize(raw)
        assert_model_text(result.text)
        assert not re.search(r"[0-9]", PROSODY_TAGS.sub("", result.text))
        assert result.text == result.text.strip() and "  " not in result.text
        assert normalize(result.text, language=result.language).text == result.text
        pieces = split_sentences(raw, rng.randint(1, 30))
        assert squash("".join(pieces)) == squash(raw)


def test_long_input_5000_characters() -> None:
    unit = "今天是2026年11月26日，温度25.5°C！It costs $50 at 3:30pm, OK? 我用iPhone 15[uv_break]打电话。😀"
    raw = (unit * (5000 // len(unit) + 1))[:5000]
    result = normalize(raw)
    assert_model_text(result.text)
    assert result.unsupported == ("😀",)
    assert result.text.count("[uv_break]") == raw.count("[uv_break]")
    pieces = split_sentences(result.text, max_chars=80)
    assert all(len(p) <= 80 for p in pieces)
    assert squash("".join(pieces)) == squash(result.text)


# --- sentence splitting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "max_chars", "expected"),
    [
        (
            "你好，我是助手。今天天气很好！你想去吗？",
            100,
            ["你好，我是助手。", "今天天气很好！", "你想去吗？"],
        ),
        (
            "Hello there. Mr. Smith paid $3.50! Is it 3.14? Yes.",
            100,
            ["Hello there.", "Mr. Smith paid $3.50!", "Is it 3.14?", "Yes."],
        ),
        ("第一行\n第二行", 100, ["第一行", "第二行"]),
        (
            "好的。[laugh]我们走吧[uv_break]，开心！[lbreak]",
            100,
            ["好的。", "[laugh]我们走吧[uv_break]，开心！[lbreak]"],
        ),
        ("a, b, c, d, e, f.", 6, ["a, b,", "c, d,", "e, f."]),
        ("甲乙丙丁戊己庚辛", 3, ["甲乙丙", "丁戊己", "庚辛"]),
        ("one two three four", 9, ["one two", "three", "four"]),
        ("averyveryverylongword short", 5, ["averyveryverylongword", "short"]),
        ("你好 [uv_break] 世界", 3, ["你", "好 [uv_break]", "世界"]),
        ("。。。", 100, ["。。。"]),
        ("", 100, []),
        ("   ", 100, []),
    ],
)
def test_split_sentences(raw: str, max_chars: int, expected: list[str]) -> None:
    assert split_sentences(raw, max_chars) == expected


def test_split_never_breaks_tags_or_words() -> None:
    raw = " ".join(["[uv_break]word", "[laugh_2]", "longerword[break_3]", "[speed_9]x"] * 40)
    for max_chars in (1, 5, 12, 30):
        pieces = split_sentences(raw, max_chars)
        assert squash("".join(pieces)) == squash(raw)
        for piece in pieces:
            for token in re.findall(r"\S+", piece):
                assert re.fullmatch(r"(\[\w+\])*\w*(\[\w+\])*", token)
            assert not re.fullmatch(r"(\[\w+\]\s*)+", piece), "a tag alone in a piece"


def test_split_long_text_keeps_everything_within_limits() -> None:
    sentence = "这是一段比较长的中文句子，里面有逗号、顿号；还有分号：以及冒号，然后才结束。"
    sentence += "It goes on, and on; and on!"
    raw = (sentence * 80)[:5000]
    pieces = split_sentences(raw, max_chars=40)
    assert squash("".join(pieces)) == squash(raw)
    assert all(len(p) <= 40 for p in pieces)
    assert len(pieces) > 5000 // 40


def test_split_no_punctuation_5000_chars() -> None:
    raw = "没有标点的文本" * 715
    pieces = split_sentences(raw)
    assert "".join(pieces) == raw
    assert [len(p) for p in pieces[:-1]] == [100] * (len(pieces) - 1)


def test_split_max_chars_must_be_positive() -> None:
    with pytest.raises(TextNormalizationError):
        split_sentences("hi", 0)
