"""Money as integer minor units of an ISO 4217 currency. Never a float."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

#: ISO 4217 minor-unit exponents of the currencies Portal accepts.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AUD": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2, "CLP": 0, "CNY": 2, "CZK": 2, "DKK": 2,
    "EUR": 2, "GBP": 2, "HKD": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "ISK": 0, "JOD": 3,
    "JPY": 0, "KRW": 0, "KWD": 3, "MXN": 2, "MYR": 2, "NOK": 2, "NZD": 2, "OMR": 3, "PHP": 2,
    "PLN": 2, "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3, "TRY": 2, "TWD": 2, "UGX": 0,
    "USD": 2, "VND": 0, "XAF": 0, "XOF": 0, "ZAR": 2,
}  # fmt: skip

#: Largest amount any single movement may carry (fits BIGINT with room for sums).
MAX_MINOR = 10**15

_AMOUNT_RE = re.compile(r"^\d{1,16}(\.\d+)?$")


class MoneyError(ValueError):
    """An amount or currency that cannot be money. ``param`` names the offending part."""

    def __init__(self, message: str, param: str = "amount") -> None:
        super().__init__(message)
        self.param = param


def normalize_currency(code: str) -> str:
    cur = (code or "").strip().upper()
    if cur not in CURRENCY_EXPONENTS:
        raise MoneyError(f"unsupported currency {code!r}", param="currency")
    return cur


def exponent(currency: str) -> int:
    return CURRENCY_EXPONENTS[normalize_currency(currency)]


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount_minor) is not int:  # bool and float are refused alike
            raise MoneyError("amount must be an integer number of minor units")
        object.__setattr__(self, "currency", normalize_currency(self.currency))

    @classmethod
    def of_major(cls, major: str | int | Decimal, currency: str) -> Money:
        """Parse a major-unit amount ("50000", "12.34") exactly; refuses more decimals than the
        currency has, and anything that is not a plain non-negative decimal number."""
        cur = normalize_currency(currency)
        text = str(major).strip().replace(",", "") if not isinstance(major, Decimal) else str(major)
        if not _AMOUNT_RE.match(text):
            raise MoneyError(f"{major!r} is not an amount")
        try:
            value = Decimal(text)
        except InvalidOperation as exc:  # pragma: no cover - guarded by the regex
            raise MoneyError(f"{major!r} is not an amount") from exc
        exp = CURRENCY_EXPONENTS[cur]
        scaled = value.scaleb(exp)
        if scaled != scaled.to_integral_value():
            raise MoneyError(f"{cur} has {exp} decimal places; {text} has more")
        return cls(int(scaled), cur)

    def is_positive(self) -> bool:
        return self.amount_minor > 0

    def to_major_str(self) -> str:
        """Exact decimal text in major units, e.g. ``"50000.00"``."""
        exp = CURRENCY_EXPONENTS[self.currency]
        sign = "-" if self.amount_minor < 0 else ""
        whole, frac = divmod(abs(self.amount_minor), 10**exp)
        return f"{sign}{whole}.{frac:0{exp}d}" if exp else f"{sign}{whole}"

    def format(self) -> str:
        """Human display with thousands separators: ``"50,000.00 IDR"``."""
        exp = CURRENCY_EXPONENTS[self.currency]
        sign = "-" if self.amount_minor < 0 else ""
        whole, frac = divmod(abs(self.amount_minor), 10**exp)
        body = f"{whole:,}" + (f".{frac:0{exp}d}" if exp else "")
        return f"{sign}{body} {self.currency}"

    def __str__(self) -> str:
        return self.format()

    def _same(self, other: Money) -> None:
        if other.currency != self.currency:
            raise MoneyError(f"cannot combine {self.currency} with {other.currency}", "currency")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor + other.amount_minor, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount_minor - other.amount_minor, self.currency)
