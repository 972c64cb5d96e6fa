"""Digits read aloud for the ChatTTS front end: numbers, dates, times, money, percentages, codes.

The ChatTTS model never saw a digit (its training text held only CJK, A-Za-z, ``，。、,.`` and
spaces), so every digit must become words. Each rule consumes the digits it matches and emits words
without digits, so the rules run as ordered passes: specific shapes (phone numbers, dates, times,
money) first, plain numbers last. The language of each reading comes from the letters around the
digits (:class:`Context`). This module decides which reading a span gets; the phrasing (plain
numbers, dates, clocks, money, percentages, units and their tables) is in :mod:`.number_phrases`,
the words for integers in :mod:`.number_words` (the integer readings are importable from here too).

Reading choices (part of the contract, pinned by tests):

* Identifiers are read digit by digit: phone-number shapes (grouped with comma pauses), runs of
  10+ digits or with a leading 0, and numbers after code words (电话/验证码/房间…, phone/room/PIN/ID…).
  zh reads 1 in them as 幺, the way numbers are read out on the phone; years use 一 (二零一九年).
* Years are read as years in dates, before 年, and in en after in/since/by/from/until/… or a month
  name; elsewhere "2026" is a quantity (两千零二十六, "two thousand twenty six").
* 2 is 两 before 千/万/亿, as the leading digit before 百, and alone before a measure word (两个,
  两点, 两岁); 二 elsewhere (二十, 第二, 二月, 二年级).
* en compound numbers use spaces, not hyphens ("twenty three"): the model's alphabet has no hyphen.
  No "and" after hundred. Years: "twenty twenty six", "nineteen oh five", "two thousand five".
* Times: zh 三点三十分, 两点, 下午三点三十分 (am/pm become 凌晨/上午/中午/下午/晚上); en "three
  thirty", "three oh five", "three o clock", "three thirty p m" (am/pm spelled as letters).
* ¥ reads as yuan (元): the CNY sign is the common one for this model's users; JPY/yen is explicit.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable

from voiceloop.tts.chattts.number_phrases import (
    _CURRENCY,
    _CURRENCY_NAMES,
    _OPERATORS,
    _UNITS,
    MONTHS,
    _date,
    _en_clock,
    _minus,
    _money,
    _percent_words,
    _zh_clock,
    read_digits,
    read_number,
)
from voiceloop.tts.chattts.number_words import en_int, en_ordinal, en_year, zh_digits, zh_int


class Context:
    """The language a digit span is read in, from the nearest words on either side.

    Latin letters glued to the digits are part of the term, not context (5G, MP3, iPhone15). Then
    agreeing or one-sided neighbours decide; a CJK character right after the digits binds them
    (50元, 3个, 4月); otherwise the dominant language does ("我用iPhone 15打电话" → 十五).
    """

    _RUN = re.compile(r"[A-Za-z]+|[\u4e00-\u9fff]+")

    def __init__(self, text: str, default: str) -> None:
        self.default = default
        runs = [(m.start(), m.end(), m.group()[0] >= "\u4e00") for m in self._RUN.finditer(text)]
        self._starts = [r[0] for r in runs]
        self._ends = [r[1] for r in runs]
        self._zh = [r[2] for r in runs]

    def lang(self, start: int, end: int) -> str:
        i = bisect_right(self._ends, start) - 1
        if i >= 0 and self._ends[i] == start and not self._zh[i]:
            i -= 1
        j = bisect_left(self._starts, end)
        if j < len(self._starts) and self._starts[j] == end and not self._zh[j]:
            j += 1
        left = ("zh" if self._zh[i] else "en") if i >= 0 else None
        right = ("zh" if self._zh[j] else "en") if j < len(self._starts) else None
        if left is None or right is None or left == right:
            return left or right or self.default
        return "zh" if right == "zh" and self._starts[j] == end else self.default


Handler = Callable[[re.Match[str], str], str | None]
_RULES: list[tuple[re.Pattern[str], Handler]] = []
_DIGIT = re.compile(r"[0-9]")


def _rule(pattern: str, flags: int = 0) -> Callable[[Handler], Handler]:
    """Register a pass; passes run in definition order. A handler returning None leaves the match."""

    def register(handler: Handler) -> Handler:
        _RULES.append((re.compile(pattern, flags | re.ASCII), handler))
        return handler

    return register


def expand(text: str, default: str) -> str:
    """Replace every ASCII digit in ``text`` by words; ``default`` is the text's dominant language."""
    for pattern, handler in _RULES:
        if not _DIGIT.search(text):
            break
        text = _apply(pattern, handler, text, default)
    return text


def _apply(pattern: re.Pattern[str], handler: Handler, text: str, default: str) -> str:
    context = Context(text, default)

    def replace(m: re.Match[str]) -> str:
        out = handler(m, context.lang(m.start(), m.end()))
        if out is None:
            return m.group()
        # English words must not fuse with neighbouring letters ("iPhone15" → "iPhone fifteen").
        head = " " if out[:1].isascii() and out[:1].isalpha() else ""
        tail = " " if out[-1:].isascii() and out[-1:].isalpha() else ""
        return head + out + tail

    return pattern.sub(replace, text)


_NUM = r"(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?"
_SIGN = r"(?:(?<![0-9A-Za-z.)\]])(-))?"  # a minus sign, not a hyphen after a word or number
_END = r"(?![0-9]|[.,][0-9])"  # the number ends here (a sentence-final period may follow)
_AMPM = r"(?:\s?([AaPp])\.?\s?[Mm](?![A-Za-z])(?:\.(?=\s+[a-z]))?)"
_MONTH = (
    r"Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?"
)


@_rule(
    r"(?<![0-9A-Za-z.+])(\+[0-9]{1,3}[ -]?)?(?:\([0-9]{2,4}\)[ -]?|[0-9]{3,4}[ -])[0-9]{3,4}[ -]?[0-9]{4}"
    + _END
)
def _phone(m: re.Match[str], lang: str) -> str:
    groups = re.findall(r"[0-9]+", m.group())
    if lang == "zh":
        return ("加" if m[1] else "") + "，".join(read_digits(g, lang) for g in groups)
    return ("plus " if m[1] else "") + ", ".join(read_digits(g, lang) for g in groups)


_ZH_CODE_WORDS = "电话|手机|号码|编号|房间|尾号|验证码|邮编|密码|卡号|账号|工号|学号|车次|航班|门牌|分机|单号"


@_rule(rf"((?:{_ZH_CODE_WORDS})(?:号码|号)?(?:是|为)?:?\s*)([0-9]{{3,}})" + _END)
def _zh_code(m: re.Match[str], lang: str) -> str:
    return m[1] + read_digits(m[2], "zh")


@_rule(
    r"((?<![A-Za-z])(?:phone|tel|telephone|call|dial|room|code|pin|zip|id|flight|ext|extension|account)\.?"
    r"(?:\s+(?:number|no\.?|is|was))*\s*[:#]?\s*)([0-9]{3,})" + _END,
    re.IGNORECASE,
)
def _en_code(m: re.Match[str], lang: str) -> str:
    return m[1] + " " + read_digits(m[2], lang)


@_rule(
    r"(?<![0-9.])(?:([0-9]{4})([-/.])([0-9]{1,2})\2([0-9]{1,2})|([0-9]{1,2})([-/.])([0-9]{1,2})\6([0-9]{4}))"
    + _END
)
def _date_numeric(m: re.Match[str], lang: str) -> str | None:
    """2026-11-26; 11/26/2026 is month first (US) unless the first part exceeds 12; 26.11.2026 day first."""
    if m[1]:
        return _date(m[1], int(m[3]), int(m[4]), lang)
    a, b = int(m[5]), int(m[7])
    day_first = b <= 12 if m[6] == "." else a > 12
    return _date(m[8], b if day_first else a, a if day_first else b, lang)


@_rule(
    rf"(?<![A-Za-z])({_MONTH})\.?\s+([0-9]{{1,2}})(?:st|nd|rd|th)?(?![0-9:A-Za-z]|\.[0-9])(?:,?\s+([0-9]{{4}}){_END})?"
)
def _date_named(m: re.Match[str], lang: str) -> str | None:
    day = int(m[2])
    if lang != "en" or not 1 <= day <= 31:
        return None
    month = next(name for name in MONTHS if name[:3] == m[1][:3])
    return f"{month} {en_ordinal(day)}" + (f", {en_year(int(m[3]))}" if m[3] else "")


@_rule(rf"(?<![0-9:.])([0-9]{{1,2}}):([0-9]{{2}})(?::([0-9]{{2}}))?(?![0-9:]){_AMPM}?")
def _time(m: re.Match[str], lang: str) -> str | None:
    hour, minute = int(m[1]), int(m[2])
    second = int(m[3]) if m[3] else None
    ampm = (m[4] or "").lower()
    if minute > 59 or (second or 0) > 59 or hour > (12 if ampm else 24):
        return None
    return _clock(m, lang, hour, minute, second, ampm)


@_rule(rf"(?<![0-9:.,])([0-9]{{1,2}}){_AMPM}")
def _hour(m: re.Match[str], lang: str) -> str | None:
    hour = int(m[1])
    if hour > 12:
        return None
    return _clock(m, lang, hour, 0, None, m[2].lower())


_DAY_PARTS = ("凌晨", "早上", "上午", "中午", "下午", "傍晚", "晚上")


def _clock(m: re.Match[str], lang: str, hour: int, minute: int, second: int | None, ampm: str) -> str:
    if lang != "zh":
        return _en_clock(hour, minute, second, ampm)
    said = m.string[max(0, m.start() - 3) : m.start()].rstrip().endswith(_DAY_PARTS)  # 下午3pm
    return _zh_clock(hour, minute, second, "" if said else ampm)


_SCALE = r"(?:\s?(thousand|million|billion|trillion|[kK]|[mM]n?|bn|[bB])(?![A-Za-z]))"


@_rule(
    rf"{_SIGN}(US\$|HK\$|[$€£¥]|(?<![A-Za-z])(?:USD|EUR|GBP|RMB|CNY|JPY|HKD)\s?)\s?(-)?({_NUM})"
    rf"(?:\s?(?:-|~|–|—|to)\s?\2?({_NUM}))?{_SCALE}?"
)
def _money_before(m: re.Match[str], lang: str) -> str:
    """$50, €5.50, US$20, $3.5M, and ranges: $5-10 → "five to ten dollars" / 五到十美元."""
    symbol = _CURRENCY_NAMES.get(m[2].strip(), m[2].strip())
    name = _CURRENCY[symbol][4]
    words = _money(None if m[5] else m[1] or m[3], symbol, m[5] or m[4], m[6], lang)
    if m[5]:
        low = _money(m[1] or m[3], symbol, m[4], None, lang)
        if lang == "zh":
            low = low[: -len(name)]
        elif "." not in m[4]:
            low = _minus(m[1] or m[3], lang) + read_number(m[4], lang)
        words = low + ("到" if lang == "zh" else " to ") + words
    return words[: -len(name)] if lang == "zh" and m.string.startswith(name, m.end()) else words


@_rule(
    rf"{_SIGN}(?<![0-9])({_NUM}){_SCALE}?\s?(USD|EUR|GBP|RMB|CNY|JPY|HKD|dollars?|bucks|euros?|yuan|yen)(?![A-Za-z])"
)
def _money_after(m: re.Match[str], lang: str) -> str:
    return _money(m[1], _CURRENCY_NAMES[m[4]], m[2], m[3], lang)


@_rule(rf"{_SIGN}(?<![0-9])({_NUM})\s?%?\s?(?:-|~|–|—|to|到)\s?(-)?({_NUM})\s?(%|‰)")
def _percent_range(m: re.Match[str], lang: str) -> str:
    high = _percent_words(m[3], m[4], m[5], lang)
    if lang == "zh":
        return _percent_words(m[1], m[2], m[5], lang) + "到" + high
    return _minus(m[1], lang) + read_number(m[2], lang) + " to " + high


@_rule(rf"{_SIGN}(?<![0-9])({_NUM})\s?(%|‰)")
def _percent(m: re.Match[str], lang: str) -> str:
    return _percent_words(m[1], m[2], m[3], lang)


_DETERMINER = re.compile(r"(?i)(the|his|her|their|my|your|our|early|late|mid)[\s-]*$")


@_rule(r"(?<![0-9.])(['’]?)([2-9]0|[0-9]{3}0)s(?![A-Za-z])")
def _decade(m: re.Match[str], lang: str) -> str | None:
    """1990s, '90s, the 80s; a bare "30s" may be seconds, so two digits need a ' or a determiner."""
    digits = m[2]
    before = m.string[max(0, m.start() - 12) : m.start()]
    if len(digits) == 2 and not m[1] and not _DETERMINER.search(before):
        return None
    if lang == "zh":  # 八十年代, 二十世纪九十年代
        year = int(digits)
        century = f"{zh_int(year // 100 + 1)}世纪" if len(digits) == 4 else ""
        return f"{century}{zh_int(year % 100)}年代" if year % 100 else zh_digits(digits) + "年代"
    head, _, last = (en_year(int(digits)) if len(digits) == 4 else en_int(int(digits))).rpartition(" ")
    return f"{head} {last[:-1] + 'ies' if last.endswith('y') else last + 's'}".lstrip()


_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))


@_rule(rf"{_SIGN}(?<![0-9])({_NUM})\s?({_UNIT_RE})(?![A-Za-z])")
def _unit(m: re.Match[str], lang: str) -> str:
    one, many, zh = _UNITS[m[3]]
    if lang == "zh":
        below_zero = "零下" if m[3] in ("°C", "°F") else "负"
        return (below_zero if m[1] else "") + read_number(m[2], lang) + zh
    return _minus(m[1], lang) + read_number(m[2], lang) + " " + (one if m[2] == "1" and not m[1] else many)


@_rule(r"(?<![0-9.])(1[0-9]{3}|20[0-9]{2})\s?[-~–—]\s?(1[0-9]{3}|20[0-9]{2})" + _END)
def _year_range(m: re.Match[str], lang: str) -> str | None:
    if int(m[1]) >= int(m[2]):
        return None
    if lang == "zh":
        before_nian = m.string[m.end() : m.end() + 2].lstrip().startswith("年")
        return f"{zh_digits(m[1])}到{zh_digits(m[2])}" if before_nian else None
    return f"{en_year(int(m[1]))} to {en_year(int(m[2]))}"


@_rule(r"(?<![0-9.])([0-9]{4})(?=\s?年)")
def _zh_year(m: re.Match[str], lang: str) -> str:
    return zh_digits(m[1])


_YEAR_WORDS = r"in|since|by|from|until|till|before|after|during|circa|year|early|late|mid"


@_rule(rf"(?<![A-Za-z])((?i:{_YEAR_WORDS})|{_MONTH})(,?\s+)([0-9]{{4}})(?![0-9]|[.,][0-9]|\s?%)")
def _en_year(m: re.Match[str], lang: str) -> str | None:
    if lang != "en" or not 1000 <= int(m[3]) <= 2099:
        return None
    return m[1] + m[2] + en_year(int(m[3]))


@_rule(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){2,}(?![0-9])")
def _version(m: re.Match[str], lang: str) -> str:
    """Versions and addresses (1.2.3, 192.168.0.1): each part a number, joined by point / 点."""
    return ("点" if lang == "zh" else " point ").join(read_number(p, lang) for p in m.group().split("."))


@_rule(rf"{_SIGN}(?<![0-9])({_NUM})(?:\s?[~–—]\s?|-)(?=-?[0-9])")
def _range(m: re.Match[str], lang: str) -> str:
    """3-5, 10~20: the first number and "to"; the second is read by a later pass (with its unit)."""
    return _minus(m[1], lang) + read_number(m[2], lang) + ("到" if lang == "zh" else " to")


@_rule(rf"{_SIGN}(?<![0-9])({_NUM})(?:\s?([×*÷x])\s?|\s(-)\s)(?=-?[0-9])")
def _arithmetic(m: re.Match[str], lang: str) -> str:
    zh, en = _OPERATORS[m[3] or m[4]]
    return _minus(m[1], lang) + read_number(m[2], lang) + (zh if lang == "zh" else f" {en}")


@_rule(r"(?<![0-9/.])([0-9]+)/([0-9]+)(?![0-9/]|\.[0-9])")
def _fraction(m: re.Match[str], lang: str) -> str:
    top, bottom = int(m[1]), int(m[2])
    if lang == "zh":
        return f"{zh_int(bottom)}分之{zh_int(top)}"
    if 2 <= bottom <= 10 and 0 < top < bottom:
        name = {2: "half", 4: "quarter"}.get(bottom) or en_ordinal(bottom)
        return f"{en_int(top)} {name}{'s' if top > 1 else ''}".replace("halfs", "halves")
    return f"{en_int(top)} over {en_int(bottom)}"


@_rule(r"(?<![0-9:.])([0-9]+):([0-9]+)(?![0-9:]|\.[0-9])")
def _ratio(m: re.Match[str], lang: str) -> str:
    return f"{read_number(m[1], lang)}{'比' if lang == 'zh' else ' to '}{read_number(m[2], lang)}"


@_rule(r"(?<![0-9.])([0-9]+)(?:st|nd|rd|th)(?![A-Za-z])", re.IGNORECASE)
def _ordinal(m: re.Match[str], lang: str) -> str:
    return "第" + zh_int(int(m[1])) if lang == "zh" else en_ordinal(int(m[1]))


@_rule(r"(?:#|(?<![A-Za-z])No\.\s?)([0-9]+)" + _END)
def _number_sign(m: re.Match[str], lang: str) -> str:
    return zh_int(int(m[1])) + "号" if lang == "zh" else "number " + en_int(int(m[1]))


@_rule(r"(?<![0-9.,])(?:[0-9]{10,}|0[0-9]+)" + _END)
def _digit_string(m: re.Match[str], lang: str) -> str:
    """Long digit strings and leading-zero codes are identifiers, not quantities."""
    return read_digits(m.group(), lang)


_MEASURE = re.compile(
    r"\s?(?!年级)(?:个|位|只|条|张|本|件|台|辆|次|天|周|星期|小时|分钟|分|秒|岁|斤|公斤|千克|米|公里|块|毛|种|份|杯|瓶"
    r"|双|对|把|家|所|座|层|名|人|点|倍|口|句|篇|部|集|门|节|头|匹|棵|朵|片|套|批|趟|遍|年|场|支|颗|架|艘|间|封|碗"
    r"|首|项|声|下|步|届|轮|百|千|万|亿)"
)


@_rule(rf"{_SIGN}(?<![0-9])({_NUM}|(?<![A-Za-z])\.[0-9]+)")
def _cardinal(m: re.Match[str], lang: str) -> str:
    if lang == "zh" and m[2] == "2" and not m[1] and _MEASURE.match(m.string, m.end()):
        return "二" if m.string[m.start() - 1 : m.start()] == "第" else "两"  # 第二个 vs 两个
    return _minus(m[1], lang) + read_number(m[2], lang)
