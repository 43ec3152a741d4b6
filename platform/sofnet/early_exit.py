"""The early-exit setting as one frozen value, from the config to the model, the evaluator and the replay.

Stdlib only (model code and the schema may import it). Usage::

    from sofnet.early_exit import EarlyExit
    et = EarlyExit.from_config(cfg.early_exit, num_segments=cfg.model.num_segments)   # checked once, here
    et = et.replace(rho=0.99)                                 # e.g. a command-line override, checked again
    if et.applies_to(model):                                  # the one causal check
        out = model.infer(frames, **et.infer_kwargs())

``mode``: ``reached`` counts ``t_min`` as frames that reached the classifier and fires at max-softmax >= rho;
``official`` counts time steps (0-based index > T_min - 1) and fires at > rho, as the official code does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

MODES = ("reached", "official")


class EarlyExitError(ValueError):
    """An early-exit value out of range, phrased as ``early_exit.<key> <why>``."""


@dataclass(frozen=True)
class EarlyExit:
    """Early termination over frames: stop reading a video once the running prediction is confident enough."""

    enabled: bool = False
    rho: float = 0.999
    t_min: int = 4
    mode: str = "reached"

    def check(self, num_segments: Optional[int] = None) -> "EarlyExit":
        """Raise :class:`EarlyExitError` on a value out of range; ``num_segments`` bounds ``t_min`` from above."""
        if self.mode not in MODES:
            raise EarlyExitError(f"early_exit.mode={self.mode!r} is not one of {', '.join(MODES)}")
        if not (isinstance(self.rho, (int, float)) and math.isfinite(self.rho) and 0.0 < self.rho <= 1.0):
            raise EarlyExitError(f"early_exit.rho={self.rho} must be in (0, 1]")
        if not isinstance(self.t_min, int) or self.t_min < 1:
            raise EarlyExitError(f"early_exit.t_min={self.t_min} must be >= 1")
        if num_segments is not None and self.t_min > num_segments:
            raise EarlyExitError(f"early_exit.t_min={self.t_min} is more than model.num_segments={num_segments}: "
                                 "early exit could never fire")
        return self

    @classmethod
    def from_config(cls, section: Any, num_segments: Optional[int] = None) -> "EarlyExit":
        """The checked value of a config's ``early_exit`` section (any mapping or attribute object)."""
        get = section.get if hasattr(section, "get") else lambda k, d=None: getattr(section, k, d)
        value = cls(enabled=bool(get("enabled", False)), rho=float(get("rho", 0.999)), t_min=int(get("t_min", 4)),
                    mode=str(get("mode", "reached")))
        return value.check(num_segments)

    def replace(self, num_segments: Optional[int] = None, **changes: Any) -> "EarlyExit":
        """A checked copy with ``changes`` (None values are ignored: an absent command-line flag)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None}).check(num_segments)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def infer_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of ``model.infer`` that turn this early exit on."""
        return {"rho": self.rho, "t_min": self.t_min, "mode": self.mode}

    @staticmethod
    def applies_to(model: Any) -> bool:
        """Whether a model can exit early: every causal one (a bidirectional TSM shift reads later frames), and not
        AR-Net (``exits_early = False``: its policy skips frames itself)."""
        return getattr(model, "exits_early", True) and getattr(model, "shift", None) != "bidirectional"
