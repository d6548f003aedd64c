"""What a Cloud API answer means for the sender: a pure function from (HTTP status, Graph error) to
an action. Classify on `error.code`, never on HTTP status alone (see whatsapp-cloud-api.md §2).

Actions:
    THROTTLE   rate limit hit; never a failure, the recipient goes back to the limiter
    TRANSIENT  nothing accepted; retry the same payload later with backoff (bounded attempts)
    PERMANENT  final for this recipient: row `failed(code)`
    HALT       the campaign cannot succeed as configured: circuit breaker, row goes back to pending
"""

from __future__ import annotations

import enum


class Action(enum.Enum):
    THROTTLE = "throttle"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    HALT = "halt"


THROTTLE_CODES = frozenset({130429, 131056, 80007, 4})
TRANSIENT_CODES = frozenset({131000, 131016, 131057, 1, 2})
# final for this recipient only
PERMANENT_CODES = frozenset({
    131026,  # not a WhatsApp user / cannot deliver
    131050,  # user stopped marketing messages (also marks the contact opted out)
    131049,  # per-user marketing cap: not retried in this campaign, eligible for a later one
    131051,  # unsupported message type
    131047,  # re-engagement window closed
    131009,  # parameter value invalid (usually the number)
    131021,  # recipient equals sender
    130472,  # marketing experiment holdout
    130403,  # business blocked this user
    130497,  # country not allowed
    132005,  # this recipient's hydrated text is too long
})
# the campaign (template, token, number, account) is broken: stop before burning the audience
HALT_CODES = frozenset({
    0, 190, 3, 10, 100, 131008, 132000, 132001, 132007, 132012, 132015, 132016, 132018,
    133010, 368, 131031, 131042, 131037, 131048, 131064, 135000,
})

# WhatsApp's titles for the report (the API's own titles are being removed from responses)
TITLES: dict[int, str] = {
    0: "Auth exception", 190: "Access token expired", 4: "App rate limit", 80007: "WABA rate limit",
    130429: "Throughput limit reached", 131056: "Pair rate limit", 131048: "Spam rate limit",
    131049: "Not delivered to maintain healthy ecosystem engagement",
    131050: "User stopped marketing messages", 131026: "Message undeliverable",
    131047: "Re-engagement message", 131051: "Unsupported message type", 131000: "Something went wrong",
    131016: "Service unavailable", 131057: "Account in maintenance mode", 1: "API unknown",
    2: "API service", 100: "Invalid parameter", 131008: "Required parameter missing",
    131009: "Parameter value invalid", 132000: "Parameter count mismatch",
    132001: "Template does not exist", 132005: "Translated text too long",
    132007: "Template format policy violated", 132012: "Parameter format mismatch",
    132015: "Template paused", 132016: "Template disabled", 132018: "Template parameter error",
    133010: "Phone number not registered", 368: "Temporarily blocked for policy violations",
    131031: "Account locked", 131042: "Business eligibility payment issue",
}


def classify(http_status: int, code: int | None, *, is_transient: bool | None = None) -> Action:
    """The sender's action for one non-success answer.

    Unknown codes: 5xx or `is_transient` → TRANSIENT; 429 → THROTTLE; codes 200-299
    (permissions) → HALT; anything else → PERMANENT for that recipient (a new code must not
    stop a campaign, nor be retried forever).
    """
    if code is not None:
        if code in THROTTLE_CODES:
            return Action.THROTTLE
        if code in TRANSIENT_CODES:
            return Action.TRANSIENT
        if code in PERMANENT_CODES:
            return Action.PERMANENT
        if code in HALT_CODES or 200 <= code <= 299:
            return Action.HALT
    if http_status == 429:
        return Action.THROTTLE
    if http_status >= 500 or is_transient:
        return Action.TRANSIENT
    if http_status in (401, 403):
        return Action.HALT
    return Action.PERMANENT


def title_for(code: int | None) -> str:
    return TITLES.get(code, "Unknown error") if code is not None else "No error code"
