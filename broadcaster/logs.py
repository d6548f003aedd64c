"""Log hygiene: phone numbers are masked (last 4 digits kept); tokens never logged."""

from __future__ import annotations


def mask_phone(number: str | None) -> str:
    """'919876543210' → '********3210'. Short or empty values are fully masked."""
    if not number:
        return ""
    digits = number.strip()
    if len(digits) <= 4:
        return "*" * len(digits)
    return "*" * (len(digits) - 4) + digits[-4:]
