"""The sandbox's memory: counters, per-number 1-s windows, pair spacing, recent payloads.

Plain synchronous code over an explicit `now` (epoch seconds), so the limits are testable with no
clock and no socket. Memory is bounded except for the per-recipient counts (one entry per distinct
accepted recipient, which is what the stats report).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

__all__ = ["SandboxState"]

PER_SECOND_KEEP = 3600  # seconds of per-second history kept for /_sandbox/stats
MESSAGES_KEEP = 5000  # recent accepted payloads kept for /_sandbox/messages
SERVICE_WINDOW_S = 24 * 3600.0  # customer-service window opened by an inbound message


class SandboxState:
    """Everything the sandbox counts. Not thread-safe: used from one trio task at a time.

    The per-number limit is a fixed 1-second window on `int(now)`: at most `mps` accepted sends
    per phone_number_id in each window; rejected attempts do not count. What a sender achieved is
    also measured the strict way: `max_in_any_second` is the most accepts in any 1-s interval
    (sliding, to the accept's own clock reading), which a fixed window can understate by 2x. This is neither the
    pair spacing (`pair_interval_s`, per recipient) nor a daily messaging-limit tier (not
    simulated).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.requests = 0
        self.accepted = 0
        self.rejected_by_code: Counter[int] = Counter()
        self.recipients: dict[str, int] = {}
        self.duplicates = 0
        self.windows: dict[str, list[int]] = {}  # phone_number_id → [second, accepted in it]
        self.max_per_second: dict[str, int] = {}
        self.recent_accepts: dict[str, deque[float]] = {}  # phone_number_id → accept times in the last 1 s
        self.max_in_any_second: dict[str, int] = {}  # sliding: the most accepts in any 1-s interval
        self.accepted_by_number: dict[str, int] = {}
        self.per_second: dict[int, int] = {}
        self.last_accept: dict[tuple[str, str], float] = {}  # (phone id, wa_id) → epoch s
        self.messages: deque[dict[str, Any]] = deque(maxlen=MESSAGES_KEEP)
        self.inbound_at: dict[str, float] = {}  # wa_id → epoch s of the last inbound message
        self.faults: Counter[str] = Counter()  # resets, timeouts, cut_bodies, slow
        self.webhooks: Counter[str] = Counter()  # posts, events, retries, failed, dropped

    # ----- limits

    def over_mps(self, phone_number_id: str, now: float, mps: int) -> bool:
        """True if one more accepted send in this 1-s window would exceed `mps` (0 = no limit)."""
        if mps <= 0:
            return False
        window = self.windows.get(phone_number_id)
        return window is not None and window[0] == int(now) and window[1] >= mps

    def pair_too_soon(self, phone_number_id: str, wa_id: str, now: float,
                      interval_s: float) -> bool:
        """True if the last accepted send to `wa_id` from this number is under `interval_s` old."""
        if interval_s <= 0:
            return False
        last = self.last_accept.get((phone_number_id, wa_id))
        return last is not None and now - last < interval_s

    def in_service_window(self, wa_id: str, now: float) -> bool:
        """True if `wa_id` sent an inbound message in the last 24 h."""
        at = self.inbound_at.get(wa_id)
        return at is not None and now - at < SERVICE_WINDOW_S

    # ----- recording

    def record_request(self) -> None:
        self.requests += 1

    def record_reject(self, code: int) -> None:
        self.rejected_by_code[code] += 1

    def record_accept(self, phone_number_id: str, wa_id: str, payload: dict[str, Any],
                      now: float, track_pair: bool) -> None:
        """Count one accepted send at `now` (per number window, per second, per recipient)."""
        second = int(now)
        self.accepted += 1
        self.accepted_by_number[phone_number_id] = self.accepted_by_number.get(phone_number_id, 0) + 1
        window = self.windows.get(phone_number_id)
        if window is None or window[0] != second:
            window = self.windows[phone_number_id] = [second, 0]
        window[1] += 1
        if window[1] > self.max_per_second.get(phone_number_id, 0):
            self.max_per_second[phone_number_id] = window[1]
        recent = self.recent_accepts.get(phone_number_id)
        if recent is None:
            recent = self.recent_accepts[phone_number_id] = deque()
        recent.append(now)
        while recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) > self.max_in_any_second.get(phone_number_id, 0):
            self.max_in_any_second[phone_number_id] = len(recent)
        per_second = self.per_second
        per_second[second] = per_second.get(second, 0) + 1
        if len(per_second) > PER_SECOND_KEEP:
            del per_second[min(per_second)]
        seen = self.recipients.get(wa_id, 0)
        if seen == 1:
            self.duplicates += 1
        self.recipients[wa_id] = seen + 1
        if track_pair:
            self.last_accept[phone_number_id, wa_id] = now
        self.messages.append(payload)

    def record_inbound(self, wa_id: str, now: float) -> None:
        self.inbound_at[wa_id] = now

    # ----- reports

    def stats(self) -> dict[str, Any]:
        """The JSON of GET /_sandbox/stats."""
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "rejected_by_code": {str(k): v for k, v in sorted(self.rejected_by_code.items())},
            "recipients": len(self.recipients),
            "duplicates": self.duplicates,
            "max_per_second": dict(self.max_per_second),
            "max_in_any_second": dict(self.max_in_any_second),
            "accepted_by_number": dict(self.accepted_by_number),
            "per_second": [[s, n] for s, n in sorted(self.per_second.items())],
            "faults": dict(self.faults),
            "webhooks": {k: self.webhooks.get(k, 0)
                         for k in ("posts", "events", "retries", "failed", "dropped")},
            "webhooks_dropped": self.webhooks.get("dropped", 0),
        }

    def recent_messages(self, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` most recent accepted payloads, oldest first."""
        if limit <= 0:
            return []
        items = list(self.messages)
        return items[-limit:]
