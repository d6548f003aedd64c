"""The segments package's exceptions (a leaf package: it never imports `broadcaster`).

    SegmentsError (ValueError)      base
    ├── InvalidPhone                a phone number was rejected; `.reason` is a short code
    ├── FileFormatError             a contact file cannot be parsed at all (names file and row)
    └── FilterError                 a segment filter is invalid (names the field)
"""

from __future__ import annotations


class SegmentsError(ValueError):
    """Bad audience input; the message says what and where."""


class InvalidPhone(SegmentsError):
    """A phone number that is not a WhatsApp-reachable mobile number.

    `reason` is one of: empty, not_a_number, too_short, too_long, invalid, not_mobile.
    The message never contains the number itself (it may be written to logs).
    """

    REASONS = ("empty", "not_a_number", "too_short", "too_long", "invalid", "not_mobile")

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail or reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class FileFormatError(SegmentsError):
    """The file cannot be read as CSV or JSON Lines (encoding, quoting, header, JSON syntax).

    Importing such a file changes nothing.
    """


class FilterError(SegmentsError):
    """A segment filter field is invalid; `.field` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"segment filter field '{field}': {message}")
