"""The words a number becomes in the ChatTTS front end, once a rule in :mod:`.numbers` chose its reading.

Split from the rule passes so the passes read as patterns and choices, and the phrasing lives in one
place: plain numbers and digit strings, dates, clock times, money, percentages, and the tables they
use (months, currencies, scale words, units, arithmetic operators). Integers come from
:mod:`.number_words`.
"""

from __future__ import annotations

import re

from voiceloop.tts.chattts.number_words import en_digits, en_int, en_ordinal, en_year, zh_digits, zh_int

MONTHS = re.split(
    " ", "January February March April May June July August September October November December"
)


def read_number(token: str, lang: str) -> str:
    """A plain number token ("1,234", "3.14", ".5", "007") in ``lang``."""
    whole, dot, frac = token.replace(",", "").partition(".")
    if not dot and len(whole) > 1 and whole[0] == "0":
        return read_digits(whole, lang)
    n = int(whole or "0")
    if lang == "zh":
        return zh_int(n) + ("点" + zh_digits(frac) if frac else "")
    return en_int(n) + (" point " + en_digits(frac) if frac else "")


def read_digits(digits: str, lang: str) -> str:
    """Codes and phone numbers, digit by digit (zh 1 is 幺)."""
    return zh_digits(digits, "幺") if lang == "zh" else en_digits(digits)


def _minus(sign: str | None, lang: str) -> str:
    return ("负" if lang == "zh" else "minus ") if sign else ""


def _date(year: str, month: int, day: int, lang: str) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    if lang == "zh":
        return f"{zh_digits(year)}年{zh_int(month)}月{zh_int(day)}日"
    return f"{MONTHS[month - 1]} {en_ordinal(day)}, {en_year(int(year))}"


def _zh_clock(hour: int, minute: int, second: int | None, ampm: str) -> str:
    part = {"a": "凌晨" if hour < 6 or hour == 12 else "上午"}.get(ampm, "")
    part = {"p": "中午" if hour == 12 else "下午" if hour < 6 else "晚上"}.get(ampm, part)
    words = part + ("两" if hour == 2 else zh_int(hour)) + "点"

    def sub(x: int) -> str:
        return "零" + (zh_int(x) if x else "") if x < 10 else zh_int(x)

    if second is None:
        return words + (sub(minute) + "分" if minute else "")
    return words + sub(minute) + "分" + sub(second) + "秒"


def _en_clock(hour: int, minute: int, second: int | None, ampm: str) -> str:
    words = en_int(hour)
    if minute:
        words += (" oh " if minute < 10 else " ") + en_int(minute)
    elif not ampm:
        words += " o clock"
    if second:
        words += f" and {en_int(second)} second{'s' if second != 1 else ''}"
    return words + (f" {ampm} m" if ampm else "")


# symbol: (en singular, en plural, en subunit singular, plural, zh)
_CURRENCY = {
    "$": ("dollar", "dollars", "cent", "cents", "美元"),
    "US$": ("US dollar", "US dollars", "cent", "cents", "美元"),
    "HK$": ("Hong Kong dollar", "Hong Kong dollars", "cent", "cents", "港元"),
    "€": ("euro", "euros", "cent", "cents", "欧元"),
    "£": ("pound", "pounds", "penny", "pence", "英镑"),
    "¥": ("yuan", "yuan", "", "", "元"),
    "JPY": ("yen", "yen", "", "", "日元"),
}
_CURRENCY_NAMES = {"USD": "$", "dollar": "$", "dollars": "$", "bucks": "$", "EUR": "€", "euro": "€"}
_CURRENCY_NAMES |= {"euros": "€", "GBP": "£", "RMB": "¥", "CNY": "¥", "yuan": "¥", "yen": "JPY", "HKD": "HK$"}
_SCALE_WORDS = {"k": ("thousand", "千"), "m": ("million", "百万"), "b": ("billion", "十亿")}
_SCALE_WORDS |= {"mn": _SCALE_WORDS["m"], "bn": _SCALE_WORDS["b"], "trillion": ("trillion", "万亿")}
_SCALE_WORDS |= {"thousand": _SCALE_WORDS["k"], "million": _SCALE_WORDS["m"], "billion": _SCALE_WORDS["b"]}


def _money(sign: str | None, symbol: str, number: str, scale: str | None, lang: str) -> str:
    """$5.99 → "five dollars and ninety nine cents" / 五点九九美元; $3.5M → "3.5 million dollars"."""
    one, many, cent, cents, zh = _CURRENCY[symbol]
    scale_words = _SCALE_WORDS[scale.lower()] if scale else None
    if lang == "zh":
        number = number.rstrip("0").rstrip(".") if "." in number else number
        return _minus(sign, lang) + read_number(number, lang) + (scale_words[1] if scale_words else "") + zh
    whole, _, frac = number.replace(",", "").partition(".")
    if scale_words or not cent or len(frac) > 2:
        words = read_number(number, lang) + (f" {scale_words[0]}" if scale_words else "")
        return _minus(sign, lang) + words + " " + (one if number == "1" and not scale_words else many)
    units, hundredths = int(whole or "0"), int(frac.ljust(2, "0")) if frac else 0
    parts = [f"{en_int(units)} {one if units == 1 else many}"] if units or not hundredths else []
    if hundredths:
        parts.append(f"{en_int(hundredths)} {cent if hundredths == 1 else cents}")
    return _minus(sign, lang) + " and ".join(parts)


def _percent_words(sign: str | None, number: str, mark: str, lang: str) -> str:
    if lang == "zh":
        return _minus(sign, lang) + ("百分之" if mark == "%" else "千分之") + read_number(number, lang)
    return _minus(sign, lang) + read_number(number, lang) + (" percent" if mark == "%" else " per mille")


def _units(spec: str) -> dict[str, tuple[str, str, str]]:
    """Parse "unit=singular/plural/zh; ..."; the plural defaults to singular + s, zh to the unit."""
    table = {}
    for item in spec.split(";"):
        unit, _, words = item.strip().partition("=")
        one, many, zh = [*words.split("/"), "", ""][:3]
        table[unit] = (one, many or one + "s", zh or unit)
    return table


_UNITS = _units(
    "°C=degree Celsius/degrees Celsius/摄氏度; °F=degree Fahrenheit/degrees Fahrenheit/华氏度; °=degree//度;"
    "km/h=kilometer per hour/kilometers per hour/公里每小时; mph=mile per hour/miles per hour/英里每小时;"
    "km=kilometer//公里; cm=centimeter//厘米; mm=millimeter//毫米; kg=kilogram//公斤; mg=milligram//毫克;"
    "ml=milliliter//毫升; mL=milliliter//毫升; ms=millisecond//毫秒; min=minute//分钟; s=second//秒;"
    "h=hour//小时; kWh=kilowatt hour//千瓦时; kW=kilowatt//千瓦; TB=terabyte; GB=gigabyte; MB=megabyte;"
    "KB=kilobyte; GHz=gigahertz/gigahertz; MHz=megahertz/megahertz; kHz=kilohertz/kilohertz; Hz=hertz/hertz"
)

_OPERATORS = {"×": ("乘", "times"), "*": ("乘", "times"), "x": ("乘", "by"), "÷": ("除以", "divided by")}
_OPERATORS["-"] = ("减", "minus")
