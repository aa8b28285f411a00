"""Checks shared by every settings dataclass: one clear error naming the setting."""
from __future__ import annotations


def check_int(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def check_float(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_window(start: float, end: float, start_name: str = "start", end_name: str = "end") -> None:
    check_float(start_name, start, 0.0, 1.0)
    check_float(end_name, end, 0.0, 1.0)
    if start > end:
        raise ValueError(f"{start_name} ({start}) must not be after {end_name} ({end})")
