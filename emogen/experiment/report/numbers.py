"""How the report writes a number: percentages, spreads, signed differences, intervals,
p-values, counts and durations, each rounded once to what is shown."""

from __future__ import annotations

import math
from datetime import datetime

from emogen.config import EMOTIONS
from emogen.experiment.results import Spread

NA = "n/a"
MINUS = "\u2212"  # a typographic minus lines up with "+" in tables
CHANCE = 1 / len(EMOTIONS)  # clarity and UA of a judge that guesses


def pct(x: float | None) -> str:
    return NA if x is None else f"{x * 100:.1f}"


def mean_std(stat: Spread | None, scale: float = 1.0, digits: int = 1) -> str:
    if stat is None:
        return NA
    text = f"{stat.mean * scale:.{digits}f}"
    return text if stat.std is None else f"{text} ± {stat.std * scale:.{digits}f}"


def signed(points: float, digits: int = 1) -> str:
    text = f"{abs(points):.{digits}f}"
    if float(text) == 0:
        return text  # "+0.0" / "−0.0" would suggest a direction that is not there
    return ("+" if points > 0 else MINUS) + text


def p_value(p: float | None) -> str:
    if p is None:
        return NA
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_text(p: float | None) -> str:
    """"p = 0.012", "p < 0.001" or "p n/a"."""
    text = p_value(p)
    return f"p {text}" if p is None or text.startswith("<") else f"p = {text}"


def interval(low: float | None, high: float | None) -> str:
    """A difference interval in points, "−3.0 to +7.2"."""
    if low is None or high is None:
        return NA
    return f"{signed(low * 100)} to {signed(high * 100)}"


def count(x: float | None) -> str:
    return NA if x is None else f"{x:,.0f}"


def duration(seconds: float | None) -> str:
    """Seconds below a minute, else minutes and seconds, else hours and minutes; rounded
    once to the shown unit, so 1619.6 s reads "27 min 0 s", never "26 min 60 s"."""
    if seconds is None or not math.isfinite(seconds):
        return NA
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole_seconds = round(seconds)
    if whole_seconds < 3600:
        return f"{whole_seconds // 60} min {whole_seconds % 60} s"
    whole_minutes = round(seconds / 60)
    return f"{whole_minutes // 60} h {whole_minutes % 60} min"


def date(created: str | None) -> str:
    if not created:
        return NA
    try:
        return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return created


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
