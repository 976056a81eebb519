"""Pass/fail limits of ``check``: the dataclass, the defaults per precision and the user's overrides.

Defaults live with the precision recipes (``recipes.DEFAULT_THRESHOLDS``); a JSON file
(``--thresholds``) or repeatable CLI values (``--min-agreement int8=98.5``) override them per precision.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import ConfigError
from ..core.manifest import PRECISIONS
from ..export.recipes import DEFAULT_THRESHOLDS as RECIPE_DEFAULTS
from ..export.recipes import RECIPES

__all__ = ["Thresholds", "DEFAULT_THRESHOLDS", "load_thresholds", "parse_threshold_overrides", "thresholds_for"]


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits for one precision.

    Attributes:
        min_agreement: minimum pixel agreement with the reference's predictions, percent.
        max_miou_drop: largest allowed drop of mIoU against the reference, mIoU points (percent).
    """

    min_agreement: float
    max_miou_drop: float


#: Defaults per precision (``recipes.DEFAULT_THRESHOLDS``, their one home); an artifact made by a
#: precision recipe gets that recipe's thresholds unless the user overrode its precision's.
DEFAULT_THRESHOLDS: dict[str, Thresholds] = {p: Thresholds(**v) for p, v in RECIPE_DEFAULTS.items()}


# ---------------------------------------------------------------------------------- thresholds
def load_thresholds(path: str | os.PathLike[str]) -> dict[str, Thresholds]:
    """Read thresholds from JSON: ``{"fp16": {"min_agreement": 99.5, "max_miou_drop": 0.2}, ...}``.

    Raises:
        ConfigError: unreadable file, unknown precision or field, non-numeric value or one outside 0..100.
    """
    from ..core.utils import read_json

    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"thresholds file: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: thresholds must be a JSON object keyed by precision")
    out: dict[str, Thresholds] = {}
    for prec, vals in data.items():
        if prec not in PRECISIONS:
            raise ConfigError(f"{path}: unknown precision {prec!r}; use {PRECISIONS}")
        if not isinstance(vals, dict) or set(vals) - {"min_agreement", "max_miou_drop"}:
            raise ConfigError(f"{path}: {prec} must hold only min_agreement and max_miou_drop")
        base = asdict(DEFAULT_THRESHOLDS[prec])
        for k, v in vals.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"{path}: {prec}.{k} must be a number")
            base[k] = float(v)
            if not _in_percent(float(v)):
                raise ConfigError(f"{path}: {prec}.{k} must be in 0..100, got {v}")
        out[prec] = Thresholds(**base)
    return out


def parse_threshold_overrides(min_agreement: Sequence[str] = (), max_miou_drop: Sequence[str] = ()
                              ) -> dict[str, Thresholds]:
    """Turn CLI values ``"99.0"`` (every precision) or ``"fp16=99.0"`` into thresholds for the precisions named.

    A precision the values do not name is left out, so that its artifacts keep their recipe's limits;
    the field not given of a named precision takes the default.

    Raises:
        ConfigError: malformed value, a value outside 0..100 or an unknown precision.
    """
    table = {p: asdict(t) for p, t in DEFAULT_THRESHOLDS.items()}
    named: set[str] = set()
    for key, values in (("min_agreement", min_agreement), ("max_miou_drop", max_miou_drop)):
        for raw in values:
            prec, _, num = raw.rpartition("=")
            targets = PRECISIONS if not prec else (prec.strip().lower(),)
            if targets[0] not in PRECISIONS:
                raise ConfigError(f"--{key.replace('_', '-')} {raw!r}: unknown precision {prec!r}; use {PRECISIONS}")
            try:
                value = float(num)
            except ValueError:
                raise ConfigError(f"--{key.replace('_', '-')} {raw!r}: not a number") from None
            if not _in_percent(value):
                raise ConfigError(f"--{key.replace('_', '-')} {raw!r}: must be in 0..100 (percent / mIoU points)")
            for p in targets:
                table[p][key] = value
                named.add(p)
    return {p: Thresholds(**v) for p, v in table.items() if p in named}


def _in_percent(value: float) -> bool:
    """A limit is a finite percentage (agreement %, mIoU points): 0..100."""
    return math.isfinite(value) and 0.0 <= value <= 100.0


def thresholds_for(precision: str, manifest: Any, overrides: dict[str, Thresholds]) -> Thresholds:
    """The limits an artifact of ``precision`` is checked against: the user's (``overrides``), else its
    precision recipe's (``manifest.extra["recipe"]``, see ``recipes.RECIPES``), else the defaults."""
    if precision in overrides:
        return overrides[precision]
    recipe = RECIPES.get(str((getattr(manifest, "extra", None) or {}).get("recipe")))
    if recipe is not None and recipe.precision == precision and recipe.thresholds:
        return Thresholds(**recipe.thresholds)
    return DEFAULT_THRESHOLDS[precision]
