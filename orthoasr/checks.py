"""The one check behind the library's argument errors: a number in its range, named."""

from __future__ import annotations

import math
import numbers


def check_number(name: str, value, least: float | None = None,
                 above: float | None = None, most: float | None = None,
                 below: float | None = None, what: str = "finite number",
                 integer: bool = False) -> None:
    """A ValueError naming `name` (and saying it must be a `what`, or an int with `integer`)
    unless value is a finite number (an integer) >= least (> above, <= most, < below);
    bools are not numbers here."""
    kind, what = (numbers.Integral, "int") if integer else (numbers.Real, what)
    if isinstance(value, bool) or not isinstance(value, kind) \
            or not math.isfinite(value) or (least is not None and value < least) \
            or (above is not None and value <= above) or (most is not None and value > most) \
            or (below is not None and value >= below):
        bound = " and ".join(f"{sign} {limit}" for sign, limit in
                             ((">=", least), (">", above), ("<=", most), ("<", below))
                             if limit is not None)
        article = "an" if what[0] in "aeiou" else "a"
        raise ValueError(f"{name} must be {article} {what} {bound}, got {value!r}")


__all__ = ["check_number"]
