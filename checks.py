"""Checks of values a user gives, with the messages they raise (module-level constants that tests
import): one choice checker and one bits parser for config, quantization and mitigation.

Standard library only, so the torch-free modules can use it.
"""
from __future__ import annotations

import re
from typing import Iterable

NOT_A_CHOICE = "{name}={value!r} is not supported{by}; supported: {choices}"
BAD_BITS = ("bits={bits!r} is not of the form 'w<weight bits>a<activation bits>'; use e.g. "
            "'w8a8', 'w4a8' or 'w4a4'")
BITS_PATTERN = re.compile(r"w(\d+)a(\d+)")


def check_choice(name: str, value, choices: Iterable, owner: str | None = None) -> None:
    """Raise ValueError (``NOT_A_CHOICE``) unless ``value`` is one of ``choices``; ``owner`` names
    what rejects it (e.g. a config class), for a value that another owner would take."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(NOT_A_CHOICE.format(name=name, value=value,
                                             by=f" by {owner}" if owner else "",
                                             choices=", ".join(map(str, choices))))


def parse_bits(bits: str | int) -> tuple[int, int]:
    """``'w4a8'`` -> ``(4, 8)``: weight and activation bit widths; an int ``b`` -> ``(b, b)``."""
    if isinstance(bits, int) and not isinstance(bits, bool):
        return bits, bits
    match = BITS_PATTERN.fullmatch(str(bits).strip().lower())
    if match is None:
        raise ValueError(BAD_BITS.format(bits=bits))
    return int(match[1]), int(match[2])
