"""Log hygiene: phone numbers are masked (last 4 digits kept); tokens never logged.

The masking itself lives with the phone rules in `segments.phones`; the engine imports it from here.
"""

from __future__ import annotations

from segments.phones import mask_phone

__all__ = ["mask_phone"]
