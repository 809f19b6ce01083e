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


LIST_LIMIT = 10
"""How many items of a list a message shows; the rest are counted (``… and N more``)."""
TEXT_LIMIT = 80
"""How many characters of a value a message shows; the rest are counted."""


def listed(items, limit: int = LIST_LIMIT) -> str:
    """``items`` as a list for a message, the first ``limit`` shown and the rest counted, so a
    10,000-name mistake gives a short line: ``['a', 'b', … and 9998 more]``."""
    items = list(items)
    if len(items) <= limit:
        return repr(items)
    return "[" + ", ".join(map(repr, items[:limit])) + f", … and {len(items) - limit} more]"


def shown(value, limit: int = TEXT_LIMIT) -> str:
    """``repr(value)`` for a message, a list through ``listed`` and a long text cut to ``limit``
    characters with its length said."""
    if isinstance(value, (list, tuple)):
        return listed(value)
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def check_choice(name: str, value, choices: Iterable, owner: str | None = None) -> None:
    """Raise ValueError (``NOT_A_CHOICE``) unless ``value`` is one of ``choices``; ``owner`` names
    what rejects it (e.g. a config class), for a value that another owner would take."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(NOT_A_CHOICE.format(name=name, value=_Shown(value),
                                             by=f" by {owner}" if owner else "",
                                             choices=", ".join(map(str, choices))))


class _Shown:
    """A value whose ``{value!r}`` in a message template is ``shown(value)``."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return shown(self.value)


def parse_bits(bits: str | int) -> tuple[int, int]:
    """``'w4a8'`` -> ``(4, 8)``: weight and activation bit widths; an int ``b`` -> ``(b, b)``."""
    if isinstance(bits, int) and not isinstance(bits, bool):
        return bits, bits
    match = BITS_PATTERN.fullmatch(str(bits).strip().lower())
    if match is None:
        raise ValueError(BAD_BITS.format(bits=bits))
    return int(match[1]), int(match[2])
