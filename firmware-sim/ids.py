"""Identifiers that look like real ones: VINs with a valid check digit, Luhn-valid test cards."""

from __future__ import annotations

import random

# ISO 3779 forbids I, O and Q so they cannot be misread as 1 and 0.
VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
_TRANSLIT = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)
# Model-year codes (position 10) for 2018-2026.
_YEARS = "JKLMNPRST"
# Card ranges that payment processors document as test numbers: they never charge a real card.
TEST_BINS = ("411111", "401288", "555555", "510510", "222300", "601111")


def vin_check_digit(vin: str) -> str:
    """The check digit (position 9) of a 17-character VIN, per ISO 3779 / FMVSS 115."""
    total = sum(_TRANSLIT[ch] * w for ch, w in zip(vin, _WEIGHTS, strict=True))
    rem = total % 11
    return "X" if rem == 10 else str(rem)


def is_valid_vin(vin: str) -> bool:
    return len(vin) == 17 and all(ch in VIN_CHARS for ch in vin) and vin[8] == vin_check_digit(vin)


def make_vin(rng: random.Random, wmi: str, serial: int) -> str:
    """A VIN for manufacturer ``wmi``; ``serial`` keeps VINs of one fleet distinct."""
    vds = "".join(rng.choice(VIN_CHARS) for _ in range(5))
    year = rng.choice(_YEARS)
    plant = rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ")
    body = f"{wmi}{vds}0{year}{plant}{serial % 1_000_000:06d}"
    return body[:8] + vin_check_digit(body) + body[9:]


def luhn_check_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions, counted from the digit left of the check digit
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def is_luhn_valid(number: str) -> bool:
    return number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def make_card(rng: random.Random) -> str:
    """A 16-digit Luhn-valid number in a documented test range."""
    body = rng.choice(TEST_BINS) + "".join(str(rng.randrange(10)) for _ in range(9))
    return body + luhn_check_digit(body)


FIRST_NAMES = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Elif",
    "Felix",
    "Greta",
    "Hannes",
    "Ines",
    "Jonas",
    "Katja",
    "Lukas",
    "Mara",
    "Nils",
    "Olga",
    "Paul",
    "Rosa",
    "Samir",
    "Tara",
    "Uwe",
    "Vera",
    "Wim",
    "Yara",
    "Zoe",
    "Amir",
    "Birgit",
    "Chen",
    "Dana",
    "Emil",
    "Fatma",
)
LAST_NAMES = (
    "Schmidt",
    "Novak",
    "Kowalski",
    "Meyer",
    "Dubois",
    "Rossi",
    "Smith",
    "Jansen",
    "Yilmaz",
    "Weber",
    "Fischer",
    "Nowak",
    "Moreau",
    "Bianchi",
    "Brown",
    "Bakker",
    "Demir",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Lefebvre",
    "Costa",
    "Taylor",
    "Visser",
    "Kaya",
    "Schulz",
)


def make_name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
