"""What a scenario returns: its own checks, its timings, notes, and how the criterion applies."""
from __future__ import annotations

from dataclasses import dataclass, field

from .checks import Check


@dataclass
class Outcome:
    checks: list[Check] = field(default_factory=list)
    timings: dict = field(default_factory=dict)     # detect_seconds, rto_seconds, rpo_seconds, ...
    notes: list[str] = field(default_factory=list)
    broken_ok: set = field(default_factory=set)     # sites whose window this scenario may break
    final: bool = False                              # the world is gone afterwards (host lost)
    skip_criterion: bool = False                     # the scenario ran its own (the HA cluster's)

    def check(self, name: str, ok: bool, detail: str, **evidence) -> None:
        self.checks.append(Check(name, bool(ok), detail, evidence=evidence))
