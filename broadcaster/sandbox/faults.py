"""Fault injection: the plan set by POST /_sandbox/faults and the seeded choices it drives.

A plan replaces the previous one entirely (`{}` clears every fault). Fields:

    error_rate       {"131000": 0.1, ...}  reject that share of otherwise valid sends with the code
    throttle_next    20      the next 20 sends → 130429 (before any other check but auth/shape)
    retry_after_s    1.5     send Retry-After (seconds, rounded up) with those 130429s
    reset_rate       0.02    accept, count, then drop the connection with no answer (TCP reset)
    timeout_rate     0.01    accept, count, then hold the answer for `stall_s` and drop it
    cut_body_rate    0.01    accept, count, send headers + half the body, then close
    slow_ms          0       delay every send answer by this many milliseconds
    template_status  {"name/lang": "PAUSED"}  override a template's status

Rates are probabilities in [0, 1] drawn from one seeded `random.Random`, so a run repeats
exactly when the requests arrive in the same order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Delivery", "FaultPlan", "FaultPlanError"]

Delivery = Literal["answer", "reset", "timeout", "cut"]
TEMPLATE_STATUSES = frozenset({"APPROVED", "PAUSED", "DISABLED", "PENDING", "REJECTED",
                               "IN_APPEAL", "PENDING_DELETION", "DELETED", "LIMIT_EXCEEDED",
                               "ARCHIVED"})


class FaultPlanError(ValueError):
    """The faults JSON is malformed; the message names the field."""


def _rate(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise FaultPlanError(f"faults field {where}: {value!r} is not a probability in [0, 1]")
    return float(value)


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultPlanError(f"faults field {where}: {value!r} is not a count >= 0")
    return value


@dataclass
class FaultPlan:
    """The active faults. Mutable only through `take_throttle` (it counts down)."""

    error_rate: dict[int, float] = field(default_factory=dict)
    throttle_next: int = 0
    retry_after_s: float | None = None
    reset_rate: float = 0.0
    timeout_rate: float = 0.0
    cut_body_rate: float = 0.0
    slow_ms: int = 0
    template_status: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object) -> FaultPlan:
        """Build a plan from the faults JSON.

        Raises:
            FaultPlanError: an unknown field or a bad value (the message names it).
        """
        if not isinstance(obj, dict):
            raise FaultPlanError("faults body must be a JSON object")
        known = {"error_rate", "throttle_next", "retry_after_s", "reset_rate", "timeout_rate",
                 "cut_body_rate", "slow_ms", "template_status"}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise FaultPlanError(f"faults field {unknown[0]}: unknown (known: {sorted(known)})")
        errors = obj.get("error_rate") or {}
        if not isinstance(errors, dict):
            raise FaultPlanError("faults field error_rate: must map Graph codes to rates")
        error_rate: dict[int, float] = {}
        for code, rate in errors.items():
            try:
                error_rate[int(code)] = _rate(rate, f"error_rate.{code}")
            except ValueError as exc:
                if isinstance(exc, FaultPlanError):
                    raise
                raise FaultPlanError(f"faults field error_rate: {code!r} is not a Graph code") \
                    from None
        if sum(error_rate.values()) > 1:
            raise FaultPlanError("faults field error_rate: the rates add up to more than 1")
        statuses = obj.get("template_status") or {}
        if not isinstance(statuses, dict):
            raise FaultPlanError("faults field template_status: must map 'name/lang' to a status")
        template_status: dict[str, str] = {}
        for key, status in statuses.items():
            if "/" not in str(key) or str(status).upper() not in TEMPLATE_STATUSES:
                raise FaultPlanError(f"faults field template_status.{key}: expected "
                                     f"'name/lang' → one of {sorted(TEMPLATE_STATUSES)}")
            template_status[str(key)] = str(status).upper()
        retry_after = obj.get("retry_after_s")
        if retry_after is not None and (isinstance(retry_after, bool)
                                        or not isinstance(retry_after, int | float)
                                        or retry_after < 0):
            raise FaultPlanError(f"faults field retry_after_s: {retry_after!r} is not seconds")
        plan = cls(
            error_rate=error_rate,
            throttle_next=_count(obj.get("throttle_next", 0), "throttle_next"),
            retry_after_s=None if retry_after is None else float(retry_after),
            reset_rate=_rate(obj.get("reset_rate", 0.0), "reset_rate"),
            timeout_rate=_rate(obj.get("timeout_rate", 0.0), "timeout_rate"),
            cut_body_rate=_rate(obj.get("cut_body_rate", 0.0), "cut_body_rate"),
            slow_ms=_count(obj.get("slow_ms", 0), "slow_ms"),
            template_status=template_status,
        )
        if plan.reset_rate + plan.timeout_rate + plan.cut_body_rate > 1:
            raise FaultPlanError("faults fields reset_rate + timeout_rate + cut_body_rate add up "
                                 "to more than 1")
        return plan

    def to_json(self) -> dict[str, Any]:
        return {
            "error_rate": {str(k): v for k, v in self.error_rate.items()},
            "throttle_next": self.throttle_next, "retry_after_s": self.retry_after_s,
            "reset_rate": self.reset_rate, "timeout_rate": self.timeout_rate,
            "cut_body_rate": self.cut_body_rate, "slow_ms": self.slow_ms,
            "template_status": dict(self.template_status),
        }

    @property
    def retry_after_header(self) -> dict[str, str]:
        """{"retry-after": "N"} for throttled answers when the plan sets one, else {}."""
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(math.ceil(self.retry_after_s))}

    def take_throttle(self) -> bool:
        """True (and one fewer left) if this send must be throttled by `throttle_next`."""
        if self.throttle_next > 0:
            self.throttle_next -= 1
            return True
        return False

    def pick_error(self, rng: random.Random) -> int | None:
        """The injected Graph code for this send, or None."""
        if not self.error_rate:
            return None
        draw = rng.random()
        for code, rate in self.error_rate.items():
            if draw < rate:
                return code
            draw -= rate
        return None

    def pick_delivery(self, rng: random.Random) -> Delivery:
        """How an accepted send's answer travels: normally, or reset / timeout / cut."""
        if not (self.reset_rate or self.timeout_rate or self.cut_body_rate):
            return "answer"
        draw = rng.random()
        for kind, rate in (("reset", self.reset_rate), ("timeout", self.timeout_rate),
                           ("cut", self.cut_body_rate)):
            if draw < rate:
                return kind  # type: ignore[return-value]
            draw -= rate
        return "answer"
