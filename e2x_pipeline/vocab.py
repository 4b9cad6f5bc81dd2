"""The field's vocabularies, in one place: outcomes, TIDE error types, FN kinds.

An outcome is ``tp``, ``fp`` or ``fn``. A false positive has a TIDE error type (Bolya et al.
2020): ``cls`` (right box, wrong class), ``loc`` (right class, IoU in [background, foreground)),
``both``, ``dupe`` (a lower-scored second detection of a matched object) or ``bkg``; a false
negative is ``missed``. An FN's kind says whether a candidate follows it: ``near_miss`` (a
low-scored detection of it exists) or ``uncovered`` (only the best-overlapping anchor).
"""

from __future__ import annotations

from typing import Literal

Outcome = Literal["tp", "fp", "fn"]
OUTCOMES: tuple[str, ...] = ("tp", "fp", "fn")
FAILURES: tuple[str, ...] = ("fp", "fn")
ERROR_TYPES: tuple[str, ...] = ("cls", "loc", "both", "dupe", "bkg", "missed")
FP_ERROR_TYPES: tuple[str, ...] = ERROR_TYPES[:5]
FN_KINDS: tuple[str, ...] = ("near_miss", "uncovered")


def outcome_sign(outcome: str) -> int:
    """The sign of the evidence that explains an outcome: ``-1`` for an FN (what suppressed the
    missed object), ``+1`` for a TP or FP (what supports the detection)."""
    return -1 if outcome == "fn" else 1


def failing_sign(outcome: str) -> int:
    """:func:`outcome_sign` for failures only; a TP has no failing features."""
    if outcome not in FAILURES:
        raise ValueError(
            f"only fp and fn candidates have failing features, got outcome {outcome!r}"
        )
    return outcome_sign(outcome)
