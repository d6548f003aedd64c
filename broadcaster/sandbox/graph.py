"""Cloud API wire shapes the sandbox answers with: errors (§2.1), success (§1.5), message ids.

Pure values only: no I/O. Section numbers refer to docs/whatsapp-cloud-api.md.
"""

from __future__ import annotations

import base64
import itertools
import os
from dataclasses import dataclass

__all__ = [
    "ERRORS",
    "GraphError",
    "WamidFactory",
    "error_body",
    "http_status_for",
    "success_body",
]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What the sandbox says for one Graph error code."""

    title: str
    details: str
    http_status: int = 400
    subcode: int | None = None


ERRORS: dict[int, ErrorInfo] = {
    0: ErrorInfo("AuthException", "We were unable to authenticate the app user.", 401),
    1: ErrorInfo("API Unknown", "Invalid request or possible server error.", 500),
    2: ErrorInfo("API Service", "Temporary due to downtime or due to being overloaded.", 503),
    4: ErrorInfo("Application request limit reached",
                 "The app has reached its API call rate limit."),
    100: ErrorInfo("Invalid parameter", "Invalid parameter."),
    190: ErrorInfo("Invalid OAuth access token", "Invalid OAuth access token.", 401),
    368: ErrorInfo("Temporarily blocked for policies violations",
                   "The WhatsApp Business Account is restricted for a policy violation."),
    80007: ErrorInfo("Rate limit issues", "The WhatsApp Business Account reached its rate limit."),
    130429: ErrorInfo("Rate limit hit", "Cloud API message throughput has been reached.",
                      subcode=2494055),
    130472: ErrorInfo("User's number is part of an experiment",
                      "Failed to send message because this user's phone number is part of an "
                      "experiment."),
    131000: ErrorInfo("Something went wrong", "Message failed to send because of an unknown error.",
                      500),
    131008: ErrorInfo("Required parameter is missing", "A required parameter is missing."),
    131009: ErrorInfo("Parameter value is not valid", "One or more parameter values are invalid."),
    131016: ErrorInfo("Service unavailable", "A service is temporarily unavailable.", 503),
    131026: ErrorInfo("Message undeliverable", "Message failed to send because the recipient is "
                      "not a WhatsApp user or cannot receive it."),
    131031: ErrorInfo("Account has been locked", "The business account is locked."),
    131047: ErrorInfo("Re-engagement message", "Message failed to send because more than 24 hours "
                      "have passed since the customer last replied to this number."),
    131048: ErrorInfo("Spam rate limit hit", "Message failed to send because there are "
                      "restrictions on how many messages can be sent from this phone number."),
    131049: ErrorInfo("This message was not delivered to maintain healthy ecosystem engagement.",
                      "In order to maintain a healthy ecosystem engagement, the message failed "
                      "to be delivered."),
    131050: ErrorInfo("User has stopped marketing messages",
                      "The user has stopped marketing messages from this business."),
    131051: ErrorInfo("Unsupported message type", "Message type is not currently supported."),
    131056: ErrorInfo("(Business Account, Consumer Account) pair rate limit hit",
                      "Too many messages sent from the sender phone number to the same recipient "
                      "phone number in a short period of time."),
    131057: ErrorInfo("Account in maintenance mode", "Business Account is in maintenance mode.",
                      503),
    132000: ErrorInfo("Number of parameters does not match the expected number of params",
                      "The number of variable parameter values does not match the number of "
                      "variable parameters defined for the template."),
    132001: ErrorInfo("Template name does not exist in the translation",
                      "The template does not exist in the specified language or the template "
                      "has not been approved."),
    132005: ErrorInfo("Translated text too long", "Translated text is too long."),
    132007: ErrorInfo("Template Format Character Policy Violated",
                      "Template content violates a WhatsApp policy."),
    132012: ErrorInfo("Parameter format does not match format in the created template",
                      "Variable parameter values formatted incorrectly."),
    132015: ErrorInfo("Template is Paused", "Template is paused due to low quality so it cannot "
                      "be sent in a template message."),
    132016: ErrorInfo("Template is Disabled", "Template has been paused too many times due to "
                      "low quality and is now permanently disabled."),
    132018: ErrorInfo("There was an issue with the parameters in your template.",
                      "There was an issue with the parameters in your template."),
    133010: ErrorInfo("Phone number Not Registered",
                      "The phone number is not registered on the WhatsApp Business Platform."),
}

_UNKNOWN = ErrorInfo("Injected error", "Error injected by the sandbox.")


def http_status_for(code: int) -> int:
    """The HTTP status the sandbox pairs with a Graph code (clients must classify on `code`)."""
    return ERRORS.get(code, _UNKNOWN).http_status


class GraphError(Exception):
    """A send or request the sandbox rejects; carries the Graph code and the `details` text."""

    def __init__(self, code: int, details: str | None = None) -> None:
        info = ERRORS.get(code, _UNKNOWN)
        self.code = code
        self.details = details or info.details
        self.http_status = info.http_status
        super().__init__(f"({code}) {self.details}")


_trace_ids = itertools.count()
_TRACE_PREFIX = base64.urlsafe_b64encode(os.urandom(9)).decode()


def error_body(code: int, details: str | None = None) -> dict[str, object]:
    """The Graph error envelope of §2.1 for `code` (subcode only where the doc shows one)."""
    info = ERRORS.get(code, _UNKNOWN)
    error: dict[str, object] = {
        "message": f"(#{code}) {info.title}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details or info.details},
    }
    if info.subcode is not None:
        error["error_subcode"] = info.subcode
    error["fbtrace_id"] = f"{_TRACE_PREFIX}{next(_trace_ids):x}"
    return {"error": error}


def webhook_error(code: int, details: str | None = None) -> dict[str, object]:
    """The error object carried in `statuses[].errors[]` of a webhook (§2.1 last bullet)."""
    info = ERRORS.get(code, _UNKNOWN)
    return {
        "code": code,
        "title": info.title,
        "message": info.title,
        "error_data": {"details": details or info.details},
        "href": "/documentation/business-messaging/whatsapp/support/error-codes",
    }


def success_body(to: str, wa_id: str, wamid: str) -> dict[str, object]:
    """The accepted-send response of §1.5."""
    return {
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": wa_id}],
        "messages": [{"id": wamid, "message_status": "accepted"}],
    }


class WamidFactory:
    """Message ids `wamid.<base64>` unique across sandbox instances and restarts.

    Each factory takes 9 random bytes once; ids are that prefix plus a counter.
    """

    def __init__(self) -> None:
        self._prefix = "wamid.HBgM" + base64.urlsafe_b64encode(os.urandom(9)).decode()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):010X}"
