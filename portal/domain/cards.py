"""Card numbers: brands and their real issuer ranges, the Luhn check, validation and generation.

Pure functions over strings of ASCII digits. Error messages never echo the number (PCI DSS 3.4).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from portal.domain.errors import InvalidInput

_DIGITS = frozenset("0123456789")
_SEPARATORS = str.maketrans("", "", " -")


def _is_digits(text: str) -> bool:
    # str.isdigit() would accept "²" and other non-ASCII digits.
    return bool(text) and all(ch in _DIGITS for ch in text)


@dataclass(frozen=True, slots=True)
class IinRange:
    """Issuer prefixes ``low``..``high`` inclusive; both have the same number of digits."""

    low: str
    high: str

    def __post_init__(self) -> None:
        if not (_is_digits(self.low) and len(self.low) == len(self.high) and self.low <= self.high):
            raise ValueError(f"bad IIN range {self.low}-{self.high}")

    @property
    def width(self) -> int:
        return len(self.low)

    def matches(self, number: str) -> bool:
        # Same-width digit strings compare like the integers they spell.
        return len(number) >= self.width and self.low <= number[: self.width] <= self.high


@dataclass(frozen=True, slots=True)
class Brand:
    id: str
    name: str
    ranges: tuple[IinRange, ...]
    lengths: frozenset[int]
    generate_length: int
    cvv_length: int


def _r(low: str, high: str | None = None) -> IinRange:
    return IinRange(low, high if high is not None else low)


#: The brands Portal issues and accepts, keyed by their stable identifier.
BRANDS: Mapping[str, Brand] = {
    b.id: b
    for b in (
        Brand("visa", "Visa", (_r("4"),), frozenset({13, 16, 19}), 16, 3),
        Brand(
            "mastercard", "Mastercard", (_r("51", "55"), _r("2221", "2720")), frozenset({16}), 16, 3
        ),
        Brand("amex", "American Express", (_r("34"), _r("37")), frozenset({15}), 15, 4),
        Brand(
            "discover",
            "Discover",
            (_r("6011"), _r("644", "649"), _r("65"), _r("622126", "622925")),
            frozenset({16, 17, 18, 19}),
            16,
            3,
        ),
    )
}

#: Longest card number any brand accepts; anything longer is refused before further work.
MAX_LENGTH = max(max(b.lengths) for b in BRANDS.values())


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, param="number", code="invalid_card_number")


def _luhn_sum(digits: str, *, double_rightmost: bool) -> int:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if (i % 2 == 0) == double_rightmost:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total


def luhn_check_digit(partial: str) -> str:
    """The digit that, appended to ``partial``, makes it Luhn-valid. ValueError if not digits."""
    if not _is_digits(partial):
        raise ValueError("partial card number must be a non-empty string of digits")
    return str((10 - _luhn_sum(partial, double_rightmost=True) % 10) % 10)


def is_luhn_valid(number: str) -> bool:
    """True if ``number`` (at least two ASCII digits, no separators) passes the Luhn check."""
    if len(number) < 2 or not _is_digits(number):
        return False
    return _luhn_sum(number, double_rightmost=False) % 10 == 0


def detect_brand(number: str) -> str | None:
    """The brand whose issuer prefix ``number`` starts with, or None. Looks at the prefix only,
    so it also works on a partly typed number; ``validate_number`` checks length and Luhn."""
    if not _is_digits(number):
        return None
    for brand in BRANDS.values():
        if any(r.matches(number) for r in brand.ranges):
            return brand.id
    return None


def normalize_number(text: str) -> str:
    """Drop spaces and dashes; InvalidInput (param "number") unless only digits remain."""
    digits = text.strip().translate(_SEPARATORS)
    if not digits:
        raise _invalid("Enter a card number.")
    if not _is_digits(digits):
        raise _invalid("A card number may contain only digits, spaces and dashes.")
    return digits


def validate_number(text: str) -> tuple[str, str]:
    """Normalise and check brand prefix, length and Luhn digit; returns (number, brand).

    Raises InvalidInput(code="invalid_card_number", param="number").
    """
    number = normalize_number(text)
    if len(number) > MAX_LENGTH:
        raise _invalid("This card number is too long.")
    brand_id = detect_brand(number)
    if brand_id is None:
        raise _invalid("This card brand is not supported.")
    brand = BRANDS[brand_id]
    if len(number) not in brand.lengths:
        raise _invalid(f"A {brand.name} card number does not have this many digits.")
    if not is_luhn_valid(number):
        raise _invalid("This card number is not valid; check the digits.")
    return number, brand_id


def get_brand(brand: str) -> Brand:
    """The brand with this identifier. InvalidInput(code="unknown_brand", param="brand")."""
    found = BRANDS.get(brand)
    if found is None:
        raise InvalidInput("Unknown card brand.", param="brand", code="unknown_brand")
    return found


def generate_number(brand: str, rng: random.Random | None = None) -> str:
    """A new Luhn-valid number of ``brand``'s issuing length under one of its real prefixes.

    Uses the operating system's CSPRNG unless ``rng`` is given (tests pass a seeded one).
    Raises InvalidInput(code="unknown_brand", param="brand") for an unknown brand.
    """
    spec = get_brand(brand)
    rand = rng if rng is not None else secrets.SystemRandom()
    iin = rand.choice(spec.ranges)
    prefix = str(rand.randint(int(iin.low), int(iin.high))).zfill(iin.width)
    body = prefix + "".join(
        str(rand.randrange(10)) for _ in range(spec.generate_length - len(prefix) - 1)
    )
    return body + luhn_check_digit(body)


def cvv_length(brand: str | None) -> int:
    """Digits in the security code: 4 for American Express, 3 for every other brand."""
    return 4 if brand == "amex" else 3


def brand_name(brand: str | None) -> str:
    """Display name of a brand identifier ("amex" -> "American Express"); "Card" if unknown."""
    found = BRANDS.get(brand) if brand is not None else None
    return found.name if found is not None else "Card"


def mask(last4: str, brand: str) -> str:
    """What a person may see of a card: brand and last four, e.g. "Visa •••• 4242".

    ValueError unless ``last4`` is exactly four digits, so a full number can never slip through.
    """
    if len(last4) != 4 or not _is_digits(last4):
        raise ValueError("mask() takes exactly the last four digits")
    return f"{brand_name(brand)} \u2022\u2022\u2022\u2022 {last4}"
