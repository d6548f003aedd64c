"""Every error the engine raises on purpose.

    BroadcasterError                    base: one sentence for the user; cli.py prints it, exits 1
    ├── ConfigError                     a setting is missing or malformed (names the variable)
    ├── UsageError                      the command's arguments are wrong (exit code 2)
    ├── NotFoundError                   a named thing (segment, campaign, template) does not exist
    ├── InputError                      a file/row/field of user input is bad (names file, row, field)
    ├── StateError                      the action does not fit the current state
    ├── DatabaseError                   Postgres failed or is unreachable (driver error chained)
    └── SendError                       one POST to the Cloud API did not end in "accepted"
        ├── TransientSendError          retry later with backoff (131000, 131016, 1, 2, 5xx)
        │   └── ProviderUnreachable     connect failed: nothing sent; many in a row pause the campaign
        ├── ThrottledError              back to the limiter, never a failure (130429, 131056, 4, 80007, 429)
        ├── PermanentSendError          final for this recipient (carries the Graph code)
        ├── CampaignHaltError           the campaign itself is broken (template, auth, account)
        └── OutcomeUnknown              the request may have arrived: timeout/connection lost after write

Translate once, at the boundary: asyncpg errors in db.py, httpcore errors and Graph codes in the
transport. Nothing above those two modules sees a driver exception.
"""

from __future__ import annotations


class BroadcasterError(Exception):
    """Something went wrong; the message says what, where and how to fix it."""

    exit_code = 1


class ConfigError(BroadcasterError):
    """A required setting is missing or malformed. The message names the environment variable."""


class UsageError(BroadcasterError):
    """The command was called with arguments that cannot work (exit code 2)."""

    exit_code = 2


class NotFoundError(BroadcasterError):
    """A named segment, campaign, template or number does not exist."""


class InputError(BroadcasterError):
    """User input (a file, a row, a field) is invalid. Nothing was stored."""


class StateError(BroadcasterError):
    """The requested action does not fit the object's current state."""


class DatabaseError(BroadcasterError):
    """Postgres failed or could not be reached; the driver error is chained as __cause__."""


class SendError(BroadcasterError):
    """A send did not end in `accepted`. Subclasses say what the dispatcher must do."""

    def __init__(self, message: str, *, code: int | None = None, title: str | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.title = title
        self.http_status = http_status


class TransientSendError(SendError):
    """Nothing was accepted; retrying the same payload later may succeed."""


class ProviderUnreachable(TransientSendError):
    """The Cloud API could not be reached (connect refused/timed out): no byte of the request left.

    Retrying is safe and spends no attempt; many in a row pause the campaign (circuit breaker).
    """


class ThrottledError(SendError):
    """A rate limit was hit. Never a failure: the recipient goes back to the limiter.

    `retry_after` is the provider's Retry-After in seconds, when it sent one.
    `pair` is True for 131056 (only this recipient must wait).
    """

    def __init__(self, message: str, *, retry_after: float | None = None, pair: bool = False,
                 **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.pair = pair


class PermanentSendError(SendError):
    """Final for this recipient (e.g. 131026 not on WhatsApp, 131050 opted out)."""


class CampaignHaltError(SendError):
    """The campaign cannot succeed as configured (template paused, token invalid, account locked)."""


class OutcomeUnknown(SendError):
    """The request's bytes left; the answer never came. It may or may not have been accepted.

    The row becomes `unknown` and is settled by status webhooks, never blindly re-sent.
    """
