"""Reading one field of JSON that a device (or our own stored data) sent, loosely typed.

Devices send numbers as numbers or as decimal strings and leave fields empty; a field of
the wrong type reads as absent instead of raising. Pure functions, no I/O.
"""

from __future__ import annotations


def opt_str(value: object) -> str | None:
    """`value` when it is a non-empty string."""
    return value if isinstance(value, str) and value else None


def opt_int(value: object) -> int | None:
    """An int sent as a number or a decimal string (a bool is not one)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:  # "²" passes isdigit(), 5000 digits pass the grammar
            return None
    return None
