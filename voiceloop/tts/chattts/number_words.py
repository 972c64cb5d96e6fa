"""Integers as words, for the ChatTTS front end's digit rules (:mod:`.numbers`).

Split from the rule engine so the pure number-to-words readings (cardinals, ordinals, years, digit
by digit, in Mandarin and English) can be read, tested and reused without the regex passes. The
reading choices are pinned by tests: 两 before 千/万/亿 and as the leading 百 digit; inner zeros read
once (一千零一); en words joined by spaces, never hyphens (the model's alphabet has none), no "and"
after hundred; years as spoken ("twenty twenty six", "nineteen oh five", "two thousand five").
"""

from __future__ import annotations

import re

_ZH = "零一二三四五六七八九"
_EN_ONES = re.split(
    " ",
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen",
)
_EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_EN_SCALES = ("", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion")
_EN_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth"}
_EN_ORDINAL |= {"nine": "ninth", "twelve": "twelfth"}


def zh_digits(digits: str, one: str = "一") -> str:
    """Read a digit string one digit at a time (phone numbers pass ``one="幺"``)."""
    return "".join(one if d == "1" else _ZH[int(d)] for d in digits)


def _zh_group(n: int, leading: bool) -> str:
    """0 < n < 10000 with inner zeros read once (一千零一) and 两 where Mandarin uses it."""
    out: list[str] = []
    gap = False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = n // value % 10
        if not d:
            gap = gap or bool(out)
            continue
        if gap:
            out.append("零")
            gap = False
        two = d == 2 and (unit == "千" or (unit == "百" and leading and not out))
        out.append(("两" if two else _ZH[d]) + unit)
    return "".join(out)


def zh_int(n: int) -> str:
    """Chinese cardinal: 一百二十三, 十万, 一亿零一, 两千; beyond 10^16 digit by digit."""
    if n < 0:
        return "负" + zh_int(-n)
    if n == 0:
        return "零"
    if n >= 10**16:
        return zh_digits(str(n))
    parts: list[str] = []
    started = gap = False
    for power, unit in ((12, "万亿"), (8, "亿"), (4, "万"), (0, "")):
        group = n // 10**power % 10000
        if not group:
            gap = gap or started
            continue
        if started and (gap or group < 1000):
            parts.append("零")
        parts.append(("两" if group == 2 and unit else _zh_group(group, leading=not started)) + unit)
        started, gap = True, False
    out = "".join(parts)
    return out[1:] if out.startswith("一十") else out


def en_digits(digits: str) -> str:
    """One word per digit: "one three eight"."""
    return " ".join(_EN_ONES[int(d)] for d in digits)


def _en_chunk(n: int) -> list[str]:
    """Words for 0 < n < 1000."""
    hundreds, rest = divmod(n, 100)
    words = [_EN_ONES[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        words.append(_EN_TENS[rest // 10])
        if rest % 10:
            words.append(_EN_ONES[rest % 10])
    elif rest:
        words.append(_EN_ONES[rest])
    return words


def en_int(n: int) -> str:
    """English cardinal: "one hundred twenty three"; beyond the quintillions digit by digit."""
    if n < 0:
        return "minus " + en_int(-n)
    if n == 0:
        return "zero"
    if n >= 1000 ** len(_EN_SCALES):
        return en_digits(str(n))
    words: list[str] = []
    for i in range(len(_EN_SCALES) - 1, -1, -1):
        chunk = n // 1000**i % 1000
        if chunk:
            words += _en_chunk(chunk) + ([_EN_SCALES[i]] if i else [])
    return " ".join(words)


def _ordinal_word(word: str) -> str:
    return _EN_ORDINAL.get(word) or (word[:-1] + "ieth" if word.endswith("y") else word + "th")


def en_ordinal(n: int) -> str:
    """English ordinal: "first", "twenty first", "one hundred eleventh"."""
    head, _, last = en_int(n).rpartition(" ")
    return f"{head} {_ordinal_word(last)}".lstrip()


def en_year(year: int) -> str:
    """Years as spoken: "twenty twenty six", "nineteen oh five", "two thousand five"."""
    if not 1000 <= year <= 9999:
        return en_int(year)
    high, low = divmod(year, 100)
    if year % 1000 < 10 and high % 10 == 0:
        return en_int(year)
    if low == 0:
        return f"{en_int(high)} hundred"
    return f"{en_int(high)} {'oh ' + _EN_ONES[low] if low < 10 else en_int(low)}"
