"""Card-number domain logic: Luhn, brand ranges, validation, generation, masking."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from portal.domain import cards
from portal.domain.errors import InvalidInput


def reference_luhn_valid(number: str) -> bool:
    """An independent formulation of Luhn to check the implementation against."""
    digits = [int(c) for c in number][::-1]
    total = sum(digits[0::2]) + sum(sum(divmod(2 * d, 10)) for d in digits[1::2])
    return total % 10 == 0


KNOWN_VALID = {
    "4242424242424242": "visa",
    "4111111111111111": "visa",
    "4000056655665556": "visa",
    "4222222222222": "visa",  # 13 digits
    "4000000000000000006": "visa",  # 19 digits
    "5555555555554444": "mastercard",
    "5105105105105100": "mastercard",
    "2223003122003222": "mastercard",
    "2221000000000009": "mastercard",
    "2720999999999996": "mastercard",
    "378282246310005": "amex",
    "371449635398431": "amex",
    "340000000000009": "amex",
    "6011111111111117": "discover",
    "6011000990139424": "discover",
    "6221260000000000": "discover",
    "6229250000000003": "discover",
    "6440000000000005": "discover",
    "6490000000000004": "discover",
    "6500000000000002": "discover",
    "60110000000000001": "discover",  # 17 digits
    "601100000000000004": "discover",  # 18 digits
    "6011000000000000001": "discover",  # 19 digits
}


# -- Luhn ------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", sorted(KNOWN_VALID))
def test_known_test_numbers_pass_luhn(number: str) -> None:
    assert cards.is_luhn_valid(number)
    assert cards.luhn_check_digit(number[:-1]) == number[-1]


def test_luhn_textbook_example() -> None:
    assert cards.luhn_check_digit("7992739871") == "3"
    assert cards.is_luhn_valid("79927398713")
    assert not cards.is_luhn_valid("79927398710")


@pytest.mark.parametrize("number", sorted(KNOWN_VALID))
def test_every_single_digit_error_is_caught(number: str) -> None:
    for i, original in enumerate(number):
        for replacement in "0123456789":
            if replacement != original:
                altered = number[:i] + replacement + number[i + 1 :]
                assert not cards.is_luhn_valid(altered), altered


def test_luhn_agrees_with_reference_on_random_numbers() -> None:
    rng = random.Random(1234)
    valid_seen = 0
    for _ in range(3000):
        number = "".join(str(rng.randrange(10)) for _ in range(rng.randint(2, 19)))
        expected = reference_luhn_valid(number)
        assert cards.is_luhn_valid(number) is expected, number
        valid_seen += expected
        completed = number[:-1] + cards.luhn_check_digit(number[:-1])
        assert reference_luhn_valid(completed), completed
    assert 150 < valid_seen < 450  # about one in ten


@pytest.mark.parametrize(
    "text", ["", "4", "4242 4242 4242 4242", "4242-4242-4242-4242", "42424242424242a2", "٤٢٤٢"]
)
def test_is_luhn_valid_refuses_non_digit_or_too_short(text: str) -> None:
    assert not cards.is_luhn_valid(text)


@pytest.mark.parametrize("partial", ["", "12a", "4242 4242", "\uff14\uff12"])
def test_luhn_check_digit_refuses_non_digits(partial: str) -> None:
    with pytest.raises(ValueError, match="digits"):
        cards.luhn_check_digit(partial)


# -- brand detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "brand"),
    [
        ("4", "visa"),
        ("49", "visa"),
        ("3", None),
        ("50", None),
        ("51", "mastercard"),
        ("53", "mastercard"),
        ("55", "mastercard"),
        ("56", None),
        ("2220", None),
        ("2221", "mastercard"),
        ("2500", "mastercard"),
        ("2720", "mastercard"),
        ("2721", None),
        ("33", None),
        ("34", "amex"),
        ("35", None),
        ("36", None),
        ("37", "amex"),
        ("38", None),
        ("6010", None),
        ("6011", "discover"),
        ("6012", None),
        ("643", None),
        ("644", "discover"),
        ("646", "discover"),
        ("649", "discover"),
        ("640", None),
        ("64", None),
        ("650", "discover"),
        ("659", "discover"),
        ("66", None),
        ("622125", None),
        ("622126", "discover"),
        ("622500", "discover"),
        ("622925", "discover"),
        ("622926", None),
        ("62", None),
        ("1", None),
        ("9", None),
    ],
)
def test_detect_brand_at_range_edges(prefix: str, brand: str | None) -> None:
    assert cards.detect_brand(prefix.ljust(16, "0")) == brand


def test_detect_brand_needs_the_whole_prefix() -> None:
    # "622" could become Discover (622126..) or not (622000): undecided, so no brand yet.
    assert cards.detect_brand("622") is None
    assert cards.detect_brand("6229") is None  # 622900..622925 is Discover, 622926.. is not
    assert cards.detect_brand("272") is None  # 2720 is Mastercard, 2721.. is not
    assert cards.detect_brand("2") is None
    assert cards.detect_brand("4") == "visa"


@pytest.mark.parametrize("number", sorted(KNOWN_VALID))
def test_detect_brand_of_known_numbers(number: str) -> None:
    assert cards.detect_brand(number) == KNOWN_VALID[number]


@pytest.mark.parametrize("text", ["", "4242 4242 4242 4242", "x4242", "\uff14242424242424242"])
def test_detect_brand_of_non_digits_is_none(text: str) -> None:
    assert cards.detect_brand(text) is None


# -- normalisation and validation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4242424242424242", "4242424242424242"),
        ("4242 4242 4242 4242", "4242424242424242"),
        ("4242-4242-4242-4242", "4242424242424242"),
        ("  3782 822463 10005 ", "378282246310005"),
        ("1", "1"),
    ],
)
def test_normalize_number_strips_spaces_and_dashes(text: str, expected: str) -> None:
    assert cards.normalize_number(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", " - ", "4242.4242.4242.4242", "4242424242424242x", "４２４２424242424242", "+4242"],
)
def test_normalize_number_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        cards.normalize_number(text)
    assert info.value.param == "number"
    assert info.value.code == "invalid_card_number"


@pytest.mark.parametrize("number", sorted(KNOWN_VALID))
def test_validate_accepts_known_numbers(number: str) -> None:
    assert cards.validate_number(number) == (number, KNOWN_VALID[number])


def test_validate_returns_normalised_number() -> None:
    assert cards.validate_number(" 5555-5555-5555-4444 ") == ("5555555555554444", "mastercard")


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424241",  # Luhn fails
        "5555555555554443",  # Luhn fails
        "424242424242424",  # Visa with 15 digits
        "42424242424242",  # Visa with 14 digits
        "42424242424242424",  # Visa with 17 digits
        "3782822463100050",  # Amex with 16 digits
        "37828224631000",  # Amex with 14 digits
        "555555555555444",  # Mastercard with 15 digits
        "601111111111111",  # Discover with 15 digits
        "60111111111111111110",  # 20 digits
        "3530111333300000",  # JCB: Luhn-valid but not a supported brand
        "5000000000000009",  # Maestro range 50: Luhn-valid, unsupported
        "0000000000000000",
        "4" * 200,
        "",
        "abcd",
    ],
)
def test_validate_refuses_bad_numbers(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        cards.validate_number(text)
    assert info.value.code == "invalid_card_number"
    assert info.value.param == "number"
    if len(text) >= 4:
        assert text not in info.value.message  # never echo a card number


def test_validate_refuses_luhn_valid_numbers_just_outside_ranges() -> None:
    for prefix in ("2220", "2721", "622125", "622926", "6012", "643", "56", "50", "35"):
        body = prefix.ljust(15, "0")
        number = body + cards.luhn_check_digit(body)
        assert cards.is_luhn_valid(number)
        with pytest.raises(InvalidInput):
            cards.validate_number(number)


# -- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("brand", "length", "range_count"),
    [("visa", 16, 1), ("mastercard", 16, 2), ("amex", 15, 2), ("discover", 16, 4)],
)
def test_generated_numbers_are_valid_for_their_brand(
    brand: str, length: int, range_count: int
) -> None:
    rng = random.Random(20240601)
    spec = cards.BRANDS[brand]
    assert len(spec.ranges) == range_count
    ranges_hit: Counter[cards.IinRange] = Counter()
    seen = set()
    for _ in range(2000):
        number = cards.generate_number(brand, rng)
        assert len(number) == length
        assert reference_luhn_valid(number)
        assert cards.validate_number(number) == (number, brand)
        ranges_hit.update(r for r in spec.ranges if r.matches(number))
        seen.add(number)
    assert set(ranges_hit) == set(spec.ranges)  # every real prefix range gets used
    assert len(seen) == 2000


def test_generation_is_reproducible_with_a_seeded_rng() -> None:
    first = [cards.generate_number("discover", random.Random(7)) for _ in range(3)]
    again = [cards.generate_number("discover", random.Random(7)) for _ in range(3)]
    assert first == again
    assert cards.generate_number("discover", random.Random(8)) != first[0]


def test_generation_uses_a_system_rng_by_default() -> None:
    numbers = {cards.generate_number("visa") for _ in range(50)}
    assert len(numbers) == 50
    for number in numbers:
        assert cards.validate_number(number) == (number, "visa")


def test_generated_body_digits_are_spread_evenly() -> None:
    rng = random.Random(99)
    counts: Counter[str] = Counter()
    for _ in range(2000):
        counts.update(cards.generate_number("visa", rng)[1:15])
    assert set(counts) == set("0123456789")
    assert all(2400 < c < 3200 for c in counts.values()), counts  # 2800 expected each


def test_generate_refuses_unknown_brand() -> None:
    with pytest.raises(InvalidInput) as info:
        cards.generate_number("jcb")
    assert info.value.param == "brand"
    assert info.value.code == "unknown_brand"


# -- presentation ----------------------------------------------------------------------------


def test_cvv_length() -> None:
    assert cards.cvv_length("amex") == 4
    assert cards.cvv_length("visa") == 3
    assert cards.cvv_length("mastercard") == 3
    assert cards.cvv_length("discover") == 3
    assert cards.cvv_length(None) == 3


def test_brand_identifiers_and_names() -> None:
    assert {b: cards.brand_name(b) for b in cards.BRANDS} == {
        "visa": "Visa",
        "mastercard": "Mastercard",
        "amex": "American Express",
        "discover": "Discover",
    }
    assert cards.brand_name("unknown") == "Card"


def test_mask() -> None:
    assert cards.mask("4242", "visa") == "Visa \u2022\u2022\u2022\u2022 4242"
    assert cards.mask("0005", "amex") == "American Express \u2022\u2022\u2022\u2022 0005"
    assert cards.mask("4444", "mastercard") == "Mastercard •••• 4444"


@pytest.mark.parametrize("last4", ["4242424242424242", "424", "", "42a2", "\uff14242"])
def test_mask_refuses_anything_but_four_digits(last4: str) -> None:
    with pytest.raises(ValueError, match="four digits"):
        cards.mask(last4, "visa")
