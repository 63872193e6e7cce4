"""Money and times in a person's locale (number, currency and date formats; the pages' language
stays English), and amounts read back the way that person writes them.

Formatting is Babel's (CLDR data), with CLDR's currency-spacing rule that Babel leaves out: a
currency sign made of letters gets a no-break space next to the digits (``IDR 13,985,000``,
``Rp 13.985.000``), a symbol does not (``$1,234.50``). A currency shows the minor digits CLDR
gives it (IDR none, JPY none, USD two) unless the amount has a fraction there: a fraction is
never rounded away.

Parsing (:func:`parse_amount`) accepts what can only mean one amount and refuses the rest with
a message written in the person's own format, never guessing:

- digits alone (``50000``);
- the locale's own writing, checked strictly by Babel (``50.000`` and ``150.000,00`` in
  Indonesian, ``1.000,50`` in German, ``1,000.50`` in English);
- one ``.`` or ``,`` followed by one or two digits and nothing else (``25.50``, ``25,5``),
  which no locale uses to group thousands;

and refuses an entry that the other convention (``.`` and ``,`` swapped) reads as a different
amount that is also possible in the currency (``1.000`` for a US-English user paying USD: one,
or a thousand?), an entry written only in the other convention (``1.000,50`` for that user),
and more decimal places than the currency has.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from babel import Locale
from babel.dates import format_datetime, match_skeleton
from babel.numbers import (
    NumberFormatError,
    NumberPattern,
    format_decimal,
    get_currency_precision,
    get_currency_symbol,
    get_decimal_symbol,
    get_group_symbol,
    parse_decimal,
)

from portal.domain.money import CURRENCY_EXPONENTS, MAX_MINOR, Money, normalize_currency

#: The locales a person can choose (number, currency and date formats), with how they write a
#: thousand and a half: what the account page lists.
LOCALES: dict[str, str] = {
    "en_US": "English (United States): 1,000.50",
    "en_GB": "English (United Kingdom): 1,000.50",
    "en_SG": "English (Singapore): 1,000.50",
    "id_ID": "Indonesian (Indonesia): 1.000,50",
    "de_DE": "German (Germany): 1.000,50",
    "fr_FR": "French (France): 1 000,50",
    "ja_JP": "Japanese (Japan): 1,000.50",
}
DEFAULT_LOCALE = "en_US"
DEFAULT_TIME_ZONE = "UTC"

_NBSP = "\u00a0"
#: Spaces people type (or paste) between groups of digits.
_SPACES = " \u00a0\u202f\u2009"
_MAX_DIGITS = 16  # as Money.of_major: far beyond any limit, well inside BIGINT


class AmountError(ValueError):
    """An entry that is not one amount in the currency; ``message`` says how to write it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def normalize_locale(value: str | None) -> str:
    """One of :data:`LOCALES` (``id-ID``, ``id_id`` and ``id`` name ``id_ID``), else the
    default."""
    text = (value or "").strip().replace("-", "_")
    if text in LOCALES:
        return text
    lowered = text.lower()
    for code in LOCALES:
        if code.lower() == lowered:
            return code
    language = lowered.split("_")[0]
    return next((c for c in LOCALES if c.split("_")[0] == language), DEFAULT_LOCALE)


def best_locale(accept_languages: list[str]) -> str:
    """The first supported locale among a browser's languages (best first), else the
    default."""
    for tag in accept_languages:
        text = (tag or "").strip().replace("-", "_")
        if not text or text == "*":
            continue
        exact = next((c for c in LOCALES if c.lower() == text.lower()), None)
        if exact:
            return exact
        language = text.lower().split("_")[0]
        match = next((c for c in LOCALES if c.split("_")[0] == language), None)
        if match:
            return match
    return DEFAULT_LOCALE


@lru_cache(maxsize=1)
def time_zones() -> tuple[str, ...]:
    """Every IANA time zone name this machine knows, sorted (UTC first)."""
    names = sorted(n for n in available_timezones() if "/" in n and not n.startswith("Etc/"))
    return ("UTC", *names)


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(time_zones())


def valid_time_zone(value: str | None) -> str | None:
    """The IANA name if it names a zone (``Asia/Jakarta``), else None."""
    text = (value or "").strip()
    if not text or len(text) > 64 or text not in _zone_names():
        return None
    return text


@lru_cache(maxsize=256)
def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(valid_time_zone(name) or DEFAULT_TIME_ZONE)
    except ZoneInfoNotFoundError:  # pragma: no cover - names come from available_timezones
        return ZoneInfo("UTC")


# Babel parses a locale name and resolves a pattern on every call: both are cached here (the
# wallet's pages format dozens of amounts and times per request).
@lru_cache(maxsize=64)
def _babel_locale(code: str) -> Locale:
    return Locale.parse(code)


@lru_cache(maxsize=512)
def _money_pattern(currency: str, locale: str) -> tuple[NumberPattern, str]:
    loc = _babel_locale(locale)
    pattern = loc.currency_formats["standard"]
    return pattern, get_currency_symbol(currency, locale=loc)


@lru_cache(maxsize=128)
def _date_pattern(skeleton: str, locale: str) -> str:
    loc = _babel_locale(locale)
    if skeleton not in loc.datetime_skeletons:
        skeleton = match_skeleton(skeleton, loc.datetime_skeletons) or skeleton
    return str(loc.datetime_skeletons[skeleton].pattern)


def _skeleton(skeleton: str, moment: datetime, time_zone: str | None, locale: str) -> str:
    return format_datetime(moment, _date_pattern(skeleton, locale), tzinfo=_zone(time_zone),
                           locale=_babel_locale(locale))  # fmt: skip


# -- formatting ---------------------------------------------------------------------------------
def _major(money: Money) -> Decimal:
    return Decimal(money.amount_minor).scaleb(-CURRENCY_EXPONENTS[money.currency])


def _spaced(text: str, sign: str) -> str:
    """CLDR currencySpacing: a no-break space between a sign ending (or starting) in a letter
    and the digits next to it."""
    if not sign or sign not in text:
        return text
    at = text.index(sign)
    before, after = text[:at], text[at + len(sign) :]
    letter_end = not unicodedata.category(sign[-1]).startswith("S")
    letter_start = not unicodedata.category(sign[0]).startswith("S")
    if after[:1].isdigit() and letter_end:
        after = _NBSP + after
    if before[-1:].isdigit() and letter_start:
        before = before + _NBSP
    return before + sign + after


def format_money(money: Money, locale: str | None = None) -> str:
    """``Rp 13.985.000`` (id_ID), ``IDR 13,985,000`` (en_US), ``$1,234.50``, ``1.234,50 €``."""
    return _format_money(money, normalize_locale(locale))


# A pure function of (amount, currency, locale) that a page calls dozens of times, mostly with
# amounts it showed before (the balances on every poll): Babel's pattern costs ~50 us a call.
@lru_cache(maxsize=8192)
def _format_money(money: Money, loc: str) -> str:
    value = _major(money)
    exp = CURRENCY_EXPONENTS[money.currency]
    shown = min(get_currency_precision(money.currency), exp)
    whole = money.amount_minor % 10 ** (exp - shown) == 0
    pattern, symbol = _money_pattern(money.currency, loc)
    if whole:
        text = pattern.apply(value, _babel_locale(loc), currency=money.currency,
                             currency_digits=True)  # fmt: skip
    else:  # a fraction CLDR would not show: all of the currency's digits, not rounded
        text = pattern.apply(value.quantize(Decimal(1).scaleb(-exp)), _babel_locale(loc),
                             currency=money.currency, currency_digits=False)  # fmt: skip
    return _spaced(text, symbol)


def amount_sign(currency: str, locale: str | None = None) -> str:
    """What the amount input shows next to it: the currency's sign in the locale (``Rp``,
    ``$``, ``€``), or its code when the sign would not tell it apart (``SGD``)."""
    return get_currency_symbol(normalize_currency(currency), locale=normalize_locale(locale))


def format_number(value: Decimal, locale: str | None = None, *, grouped: bool = True) -> str:
    return format_decimal(value, locale=normalize_locale(locale), group_separator=grouped,
                          decimal_quantization=False)  # fmt: skip


def format_amount_input(money: Money, locale: str | None = None) -> str:
    """An amount as the form's input shows it again, in the person's format without a sign:
    ``150.000`` (id_ID, IDR), ``1,000.50`` (en_US)."""
    value = _major(money)
    exp = CURRENCY_EXPONENTS[money.currency]
    if money.amount_minor % 10**exp:
        value = value.quantize(Decimal(1).scaleb(-exp))
    else:
        value = value.quantize(Decimal(1))
    return format_number(value, locale)


def local_time(moment: datetime, time_zone: str | None, locale: str | None = None) -> datetime:
    """``moment`` in the zone (naive datetimes are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(_zone(time_zone))


def _english(locale: str) -> bool:
    return locale.startswith("en")


def format_date(moment: datetime, time_zone: str | None, locale: str | None = None) -> str:
    """The day in the person's zone: ``3 Dec 2026`` (en_GB), ``Dec 3, 2026`` (en_US), and the
    numeric form elsewhere (``3/12/2026`` id_ID, ``3.12.2026`` de_DE) so the words stay
    English."""
    loc = normalize_locale(locale)
    return _skeleton("yMMMd" if _english(loc) else "yMd", moment, time_zone, loc)


def format_clock(moment: datetime, time_zone: str | None, locale: str | None = None) -> str:
    """The time of day in the person's zone: ``07:05`` (en_GB, de_DE), ``7:05 AM`` (en_US),
    ``07.05`` (id_ID)."""
    loc = normalize_locale(locale)
    pattern = _babel_locale(loc).time_formats["short"].pattern
    skeleton = "hm" if "h" in pattern else "Hm"
    if not _english(loc):
        skeleton = "Hm"  # no "AM"/"PM" in another language
    return _skeleton(skeleton, moment, time_zone, loc)


def format_moment(moment: datetime, time_zone: str | None, locale: str | None = None) -> str:
    """``3 Dec 2026, 07:05`` in the person's zone and format."""
    return f"{format_date(moment, time_zone, locale)}, {format_clock(moment, time_zone, locale)}"


def zone_label(time_zone: str | None) -> str:
    return valid_time_zone(time_zone) or DEFAULT_TIME_ZONE


# -- parsing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Convention:
    decimal: str
    group: str


def _conventions(locale: str) -> tuple[_Convention, _Convention]:
    """The locale's own (decimal, group) and the other one (``.`` and ``,`` swapped)."""
    decimal, group = get_decimal_symbol(locale), get_group_symbol(locale)
    if group in _SPACES:
        group = " "
    other = _Convention(",", ".") if decimal == "." else _Convention(".", ",")
    return _Convention(decimal, group), other


_SIMPLE_DECIMAL = re.compile(r"^(\d+)[.,](\d{1,2})$")
_DIGITS = re.compile(r"^\d+$")


def _read(text: str, convention: _Convention, locale: str, own: bool) -> tuple[Decimal, int] | None:
    """The amount ``text`` is in a convention, with the decimal places written; None if it is
    not well formed there (Babel's strict check: groups of three after the first)."""
    allowed = set("0123456789") | {convention.decimal, convention.group}
    if not set(text) <= allowed or text.count(convention.decimal) > 1:
        return None
    whole, _, fraction = text.partition(convention.decimal)
    if not whole or (convention.decimal in text and not fraction):
        return None
    if convention.group in fraction:
        return None
    groups = whole.split(convention.group)
    if len(groups) > 1 and (
        not 1 <= len(groups[0]) <= 3 or any(len(g) != 3 for g in groups[1:]) or groups[0] == "0"
    ):
        return None
    if own:
        # The locale's own writing goes through Babel's strict parser as well (its symbols).
        babel_text = (
            text.replace(" ", get_group_symbol(locale)) if convention.group == " " else text
        )
        try:
            value = parse_decimal(babel_text, locale=locale, strict=True)
        except NumberFormatError:
            return None
    else:
        value = Decimal("".join(groups) + ("." + fraction if fraction else ""))
    return value, len(fraction)


def _strip_currency(text: str, currency: str, locale: str) -> str:
    signs = {currency, get_currency_symbol(currency, locale=locale),
             get_currency_symbol(currency, locale="en"), _babel_locale(locale).currency_symbols.get(
                 currency, currency)}  # fmt: skip
    for sign in sorted(signs, key=len, reverse=True):
        if text.upper().startswith(sign.upper()):
            text = text[len(sign) :]
            break
        if text.upper().endswith(sign.upper()):
            text = text[: -len(sign)]
            break
    return text.strip(_SPACES)


def _example(value: Decimal, currency: str, locale: str, *, grouped: bool) -> str:
    """``value`` as the person writes it, with the minor digits the currency shows (IDR none,
    unless ``value`` has a fraction)."""
    exp = CURRENCY_EXPONENTS[currency]
    places = min(get_currency_precision(currency), exp)
    if value != value.quantize(Decimal(1).scaleb(-places)):
        places = exp
    pattern = ("#,##0" if grouped else "0") + ("." + "0" * places if places else "")
    return format_decimal(value, format=pattern, locale=locale)


def _ways(value: Decimal, currency: str, locale: str) -> str:
    """ "1000.50 or 1,000.50": how the person writes ``value``."""
    plain = _example(value, currency, locale, grouped=False)
    grouped = _example(value, currency, locale, grouped=True)
    return plain if plain == grouped else f"{plain} or {grouped}"


def _to_money(value: Decimal, places: int, currency: str, raw: str) -> Money:
    exp = CURRENCY_EXPONENTS[currency]
    if places > exp:
        if exp == 0:
            raise AmountError(f"{currency} has no decimal places; “{raw}” has {places}.")
        raise AmountError(
            f"{currency} has {exp} decimal place{'s' if exp != 1 else ''}; “{raw}” has {places}."
        )
    minor = int(value.scaleb(exp))
    if len(str(int(value))) > _MAX_DIGITS or minor > MAX_MINOR:
        raise AmountError(f"“{raw}” is more than any card can hold.")
    return Money(minor, currency)


def parse_amount(text: str | None, currency: str, locale: str | None = None) -> Money:
    """What a person in ``locale`` typed as an amount of ``currency``, exactly. Raises
    AmountError, whose message says how to write it in that locale."""
    cur = normalize_currency(currency)
    loc = normalize_locale(locale)
    raw = (text or "").strip()
    shows_cents = min(get_currency_precision(cur), CURRENCY_EXPONENTS[cur]) > 0
    example = _ways(Decimal("1000.5") if shows_cents else Decimal(50000), cur, loc)
    if not raw:
        raise AmountError(f"Enter an amount in {cur}, like {example}.")
    if len(raw) > 40:
        raise AmountError(f"Enter an amount in {cur}, like {example}.")
    body = _strip_currency(raw, cur, loc)
    if body.startswith("-"):
        raise AmountError("Enter an amount above zero.")
    for space in _SPACES:
        body = body.replace(space, " ")
    body = re.sub(" +", " ", body)
    if _DIGITS.match(body):
        return _to_money(Decimal(body), 0, cur, raw)
    if (simple := _SIMPLE_DECIMAL.match(body)) is not None:
        # One separator and one or two digits after it: a decimal point in every convention.
        whole, fraction = simple.groups()
        return _to_money(Decimal(f"{whole}.{fraction}"), len(fraction), cur, raw)
    own, other = _conventions(loc)
    mine = _read(body, own, loc, own=True)
    theirs = _read(body, other, loc, own=False) if " " not in body else None
    exp = CURRENCY_EXPONENTS[cur]
    mine_ok = mine is not None and mine[1] <= exp
    theirs_ok = theirs is not None and theirs[1] <= exp
    if mine is not None and mine_ok and (not theirs_ok or theirs is None or theirs[0] == mine[0]):
        return _to_money(mine[0], mine[1], cur, raw)
    if mine_ok and theirs_ok:
        assert mine is not None
        assert theirs is not None
        raise AmountError(
            f"“{raw}” could mean {_ways(mine[0], cur, loc).split(' or ')[-1]} or"
            f" {_ways(theirs[0], cur, loc).split(' or ')[-1]}: write {_ways(mine[0], cur, loc)}"
            f" for the first, {_ways(theirs[0], cur, loc)} for the second."
        )
    if theirs is not None and theirs_ok:
        # Written the other way round (1.000,50 for someone who writes 1,000.50): not a guess.
        if mine is not None:  # 1.000 in US English: one with too many decimals, or a thousand?
            places = "no decimal places" if exp == 0 else f"{exp} decimal place" + "s" * (exp > 1)
            raise AmountError(
                f"{cur} has {places}; “{raw}” has {mine[1]}. If you meant"
                f" {_example(theirs[0], cur, loc, grouped=True)}, write"
                f" {_ways(theirs[0], cur, loc)}."
            )
        raise AmountError(f"We cannot tell which amount “{raw}” is: write "
                          f"{_ways(theirs[0], cur, loc)}.")  # fmt: skip
    if mine is not None:
        return _to_money(mine[0], mine[1], cur, raw)  # too many decimal places: says so
    if theirs is not None:
        return _to_money(theirs[0], theirs[1], cur, raw)
    raise AmountError(f"Enter an amount in {cur}, like {example}.")
