"""Money in a person's locale: Babel's formats (with CLDR's currency spacing), and amounts read
back exactly as that person writes them, ambiguous entries refused in their own terms."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.domain.locale import (
    LOCALES,
    AmountError,
    best_locale,
    format_amount_input,
    format_clock,
    format_moment,
    format_money,
    normalize_locale,
    parse_amount,
    valid_time_zone,
)
from portal.domain.money import Money

NBSP = "\u00a0"
#: The currencies Portal's default limits support.
CURRENCIES = ("IDR", "USD", "EUR", "SGD", "JPY")


@pytest.mark.parametrize(
    ("money", "locale", "text"),
    [
        (Money(1_398_500_000, "IDR"), "id_ID", f"Rp{NBSP}13.985.000"),
        (Money(1_398_500_000, "IDR"), "en_US", f"IDR{NBSP}13,985,000"),
        (Money(1_398_500_050, "IDR"), "id_ID", f"Rp{NBSP}13.985.000,50"),  # never rounded away
        (Money(123_450, "USD"), "en_US", "$1,234.50"),
        (Money(123_450, "EUR"), "de_DE", f"1.234,50{NBSP}€"),
        (Money(123_450, "EUR"), "en_US", "€1,234.50"),
        (Money(123_450, "SGD"), "en_SG", "$1,234.50"),
        (Money(123_450, "SGD"), "en_US", f"SGD{NBSP}1,234.50"),
        (Money(1234, "JPY"), "en_US", "¥1,234"),
        (Money(-500, "USD"), "en_US", "-$5.00"),
    ],
)
def test_format_money_by_currency_and_locale(money: Money, locale: str, text: str) -> None:
    assert format_money(money, locale) == text


@pytest.mark.parametrize(
    ("text", "currency", "locale", "minor"),
    [
        ("50.000", "IDR", "id_ID", 5_000_000),
        ("150.000,00", "IDR", "id_ID", 15_000_000),
        ("Rp 50.000", "IDR", "id_ID", 5_000_000),
        ("1.000,50", "EUR", "de_DE", 100_050),
        ("1,000.50", "USD", "en_US", 100_050),
        ("1,000", "USD", "en_US", 100_000),
        ("$25", "USD", "en_US", 2500),
        ("25 USD", "USD", "en_US", 2500),
        ("25.5", "EUR", "de_DE", 2550),  # one or two digits after a point: a decimal anywhere
        ("25,50", "USD", "en_US", 2550),
        ("1 000,50", "EUR", "fr_FR", 100_050),
        ("1\u202f000,50", "EUR", "fr_FR", 100_050),
        ("1,000", "JPY", "en_US", 1000),
        ("1.000.000", "IDR", "id_ID", 100_000_000),
        ("50000", "IDR", "en_US", 5_000_000),
    ],
)
def test_parse_amount_reads_the_locale(text: str, currency: str, locale: str, minor: int) -> None:
    assert parse_amount(text, currency, locale) == Money(minor, currency)


@pytest.mark.parametrize(
    ("text", "currency", "locale", "message"),
    [
        # Written the other way round: refused, with how to write it in one's own format.
        ("1.000,50", "USD", "en_US",
         "We cannot tell which amount “1.000,50” is: write 1000.50 or 1,000.50."),
        ("1,000.50", "EUR", "de_DE",
         "We cannot tell which amount “1,000.50” is: write 1000,50 or 1.000,50."),
        # One, or a thousand?
        ("1.000", "USD", "en_US",
         "USD has 2 decimal places; “1.000” has 3. If you meant 1,000.00, write 1000.00 or "
         "1,000.00."),
        ("1.00050", "USD", "en_US", "USD has 2 decimal places; “1.00050” has 5."),
        ("1,5", "JPY", "en_US", "JPY has no decimal places; “1,5” has 1."),
        ("1000,500", "IDR", "de_DE", "IDR has 2 decimal places; “1000,500” has 3."),
        ("abc", "USD", "en_US", "Enter an amount in USD, like 1000.50 or 1,000.50."),
        ("abc", "IDR", "id_ID", "Enter an amount in IDR, like 50000 or 50.000."),
        ("12.345", "IDR", "en_US",
         "IDR has 2 decimal places; “12.345” has 3. If you meant 12,345, write 12345 or 12,345."),
        ("1,00,000", "USD", "en_US", "Enter an amount in USD, like 1000.50 or 1,000.50."),
        ("-5", "USD", "en_US", "Enter an amount above zero."),
        ("", "USD", "en_US", "Enter an amount in USD, like 1000.50 or 1,000.50."),
    ],
)  # fmt: skip
def test_parse_amount_refuses_what_it_cannot_tell(
    text: str, currency: str, locale: str, message: str
) -> None:
    with pytest.raises(AmountError) as caught:
        parse_amount(text, currency, locale)
    assert caught.value.message == message


def test_three_decimal_currency_is_ambiguous_both_ways() -> None:
    """BHD has three decimal places: "1,000" in English could be a thousand or one."""
    with pytest.raises(AmountError) as caught:
        parse_amount("1,000", "BHD", "en_US")
    assert "could mean" in caught.value.message


_money = st.sampled_from(CURRENCIES).flatmap(
    lambda cur: st.integers(min_value=1, max_value=10**13).map(lambda minor: Money(minor, cur))
)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(money=_money, locale=st.sampled_from(sorted(LOCALES)))
def test_format_then_parse_gives_the_amount_back(money: Money, locale: str) -> None:
    assert parse_amount(format_money(money, locale), money.currency, locale) == money
    assert parse_amount(format_amount_input(money, locale), money.currency, locale) == money


def test_locale_choice() -> None:
    assert normalize_locale("id-ID") == "id_ID"
    assert normalize_locale("de") == "de_DE"
    assert normalize_locale("xx") == "en_US"
    assert best_locale(["fr-CH", "en"]) == "fr_FR"
    assert best_locale(["*"]) == "en_US"


def test_times_in_the_persons_zone() -> None:
    moment = datetime(2026, 12, 3, 0, 5, tzinfo=UTC)
    assert format_moment(moment, "Asia/Jakarta", "en_GB") == "3 Dec 2026, 07:05"
    assert format_moment(moment, "UTC", "en_GB") == "3 Dec 2026, 00:05"
    assert format_clock(moment, "America/New_York", "en_US").replace("\u202f", " ") == "7:05 PM"
    assert format_moment(moment, "Asia/Jakarta", "id_ID") == "3/12/2026, 07.05"
    assert valid_time_zone("Asia/Jakarta") == "Asia/Jakarta"
    assert valid_time_zone("Mars/Olympus") is None
    assert valid_time_zone("../../etc/passwd") is None
