"""Phone numbers → the WhatsApp digit form (E.164 without '+'), via libphonenumber.

Guarantees:
- `normalize_phone` either returns digits (country code + national number) or raises
  `InvalidPhone` with a reason code; it never guesses (no digit padding, no letter mapping).
- Accepted: numbers `phonenumbers` calls valid and of type MOBILE or FIXED_LINE_OR_MOBILE, for the
  default region and for foreign numbers written with their country code; and Indian numbers that
  are valid with a 10-digit national number starting 6-9 (the mobile series), even where
  libphonenumber's range data calls them fixed lines (it does for ~15% of real-looking creator
  numbers; rejecting those would drop real people). Fixed lines (2-5…, 1…), toll-free,
  premium-rate and the like are rejected as `not_mobile`.
- Letters are never accepted, even though libphonenumber would read `98765ABCDE` as a vanity
  number; extensions (`x12`) count as letters too.
- `mask_phone` keeps only the last 4 digits: the only form of a number fit for logs and previews.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, ValidationResult

from segments.errors import InvalidPhone

__all__ = ["InvalidPhone", "is_wa_id", "mask_phone", "normalize_phone"]

MAX_RAW_LENGTH = 64  # characters; anything longer is not a phone number someone typed

_ACCEPTED_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
_MOBILE_OR_FIXED = _ACCEPTED_TYPES | {PhoneNumberType.FIXED_LINE}
_SEPARATORS = frozenset(" \t\u00a0\u2007\u202f-.()/\u2010\u2011\u2012\u2013")
# The common Indian forms, decided without phonenumbers.parse (which costs ~20 µs): separators
# dropped, then '+91', '0091', '91', '0' or nothing, then 10 digits starting 6-9. The type check
# uses libphonenumber's metadata; tests prove the result equals the full parse for these forms.
_FAST_IN = re.compile(r"(?:\+91|0091|91|0)?([6-9][0-9]{9})", re.ASCII)
_DROP_SEPARATORS = str.maketrans("", "", " \t-.()")
_BARE_LEAD = frozenset("+0123456789")

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "invalid",
    NumberParseException.NOT_A_NUMBER: "not_a_number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too_short",
    NumberParseException.TOO_SHORT_NSN: "too_short",
    NumberParseException.TOO_LONG: "too_long",
}
_POSSIBLE_REASONS = {
    ValidationResult.TOO_SHORT: "too_short",
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "too_short",
    ValidationResult.TOO_LONG: "too_long",
}


def _precheck(raw: str) -> str:
    """Strip, and reject what libphonenumber would be too lenient with (letters, stray '+')."""
    text = raw.strip()
    if not text:
        raise InvalidPhone("empty", "no phone number given")
    if len(text) > MAX_RAW_LENGTH:
        raise InvalidPhone("not_a_number", f"{len(text)} characters is too long for a phone number")
    digits = 0
    seen_plus = False
    for ch in text:
        if ch.isdigit():
            if unicodedata.decimal(ch, None) is None:
                raise InvalidPhone("not_a_number", "contains a character that is not a decimal digit")
            digits += 1
        elif ch in ("+", "\uff0b"):
            if seen_plus or digits:
                raise InvalidPhone("not_a_number", "'+' may only lead the number")
            seen_plus = True
        elif ch not in _SEPARATORS:
            raise InvalidPhone("not_a_number", "contains letters or symbols")
    if digits == 0:
        raise InvalidPhone("not_a_number", "contains no digits")
    return text


def normalize_phone(raw: str, default_region: str = "IN") -> str:
    """Return the WhatsApp digit form of `raw` (E.164 without '+'), e.g. '919800000004'.

    Args:
        raw: the number as written: '+91 98000 00004', '09800000004', '0091 9800000004',
            '919800000004', '9800000004', '(+91) 98000.00004', ' 9800000004 ', '+44 …'.
        default_region: ISO 3166 region for numbers written without a country code.

    Raises:
        InvalidPhone: with `.reason` in empty, not_a_number, too_short, too_long, invalid,
            not_mobile. The message never repeats the number.
    """
    if raw is None:
        raise InvalidPhone("empty", "no phone number given")
    raw = str(raw)
    region = default_region.upper()
    if region == "IN":
        # already bare ('+919800000004', '9800000004'): nothing for translate to drop
        bare = raw[:1] in _BARE_LEAD and raw[1:].isdigit()
        fast = _FAST_IN.fullmatch(raw if bare else raw.translate(_DROP_SEPARATORS))
        if fast:
            national = fast.group(1)
            matcher = _india_types()
            if matcher.mobile_or_fixed(national):
                return "91" + national  # MOBILE, FIXED_LINE_OR_MOBILE, or FIXED_LINE in the 6-9 series
            number = phonenumbers.PhoneNumber(country_code=91, national_number=int(national))
            return _check_type(number, "91" + national, matcher.number_type(national))
    return _normalize_full(raw, region)


def _normalize_full(raw: str, region: str) -> str:
    """normalize_phone without the Indian fast path: libphonenumber's parse for every input."""
    text = _precheck(raw)
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise InvalidPhone(_PARSE_REASONS.get(exc.error_type, "invalid"), "not a phone number") from None
    return _check_type(number, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:])


class _TypeMatcher:
    """libphonenumber's `_number_type_helper` for one region, with its patterns compiled once.

    `phonenumbers.number_type` costs ≈ 12 µs, mostly re-looking-up compiled patterns; this is the
    same decision procedure over the same metadata in ≈ 2.5 µs. Tests check it agrees with
    `phonenumbers.number_type` on hundreds of thousands of numbers.
    """

    _SPECIAL = (("premium_rate", PhoneNumberType.PREMIUM_RATE), ("toll_free", PhoneNumberType.TOLL_FREE),
                ("shared_cost", PhoneNumberType.SHARED_COST), ("voip", PhoneNumberType.VOIP),
                ("personal_number", PhoneNumberType.PERSONAL_NUMBER), ("pager", PhoneNumberType.PAGER),
                ("uan", PhoneNumberType.UAN), ("voicemail", PhoneNumberType.VOICEMAIL))

    def __init__(self, region: str) -> None:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        if meta is None:
            raise ValueError(f"no phone metadata for region {region!r}")
        self._general = self._desc(meta.general_desc)
        self._special = [(kind, d) for name, kind in self._SPECIAL
                         if (d := self._desc(getattr(meta, name))) is not None]
        self._fixed = self._desc(meta.fixed_line)
        self._mobile = self._desc(meta.mobile)
        self._same = bool(meta.same_mobile_and_fixed_line_pattern)
        self._accepts: dict[int, re.Pattern[str] | None] = {}
        self._mobile_or_fixed: dict[int, re.Pattern[str] | None] = {}

    @staticmethod
    def _desc(desc: phonenumbers.PhoneNumberDesc | None) -> tuple[frozenset[int], re.Pattern[str]] | None:
        if desc is None or not desc.national_number_pattern:
            return None
        return frozenset(desc.possible_length or ()), re.compile(desc.national_number_pattern)

    @staticmethod
    def _matches(desc: tuple[frozenset[int], re.Pattern[str]] | None, national: str) -> bool:
        if desc is None:
            return False
        lengths, pattern = desc
        if lengths and len(national) not in lengths:
            return False
        return pattern.fullmatch(national) is not None

    def accepts(self, national: str) -> bool:
        """number_type(national) in (MOBILE, FIXED_LINE_OR_MOBILE): general ∧ no special type ∧ mobile."""
        if self._same:
            return self.number_type(national) in _ACCEPTED_TYPES
        return self._decide(national, self._accepts, (self._mobile,))

    def mobile_or_fixed(self, national: str) -> bool:
        """number_type(national) in (MOBILE, FIXED_LINE_OR_MOBILE, FIXED_LINE): general ∧ no special
        type ∧ (fixed line ∨ mobile)."""
        if self._same:
            return self.number_type(national) in _MOBILE_OR_FIXED
        return self._decide(national, self._mobile_or_fixed, (self._mobile, self._fixed))

    def _decide(self, national: str, by_length: dict[int, re.Pattern[str] | None],
                wanted: tuple[tuple[frozenset[int], re.Pattern[str]] | None, ...]) -> bool:
        """The same decision as number_type, in one regex call: the patterns that apply to the
        number's length, combined as `(?=general$)(?!special$)(?:wanted)$` (instead of up to 11
        calls)."""
        length = len(national)
        try:
            test = by_length[length]
        except KeyError:
            test = by_length[length] = self._length_test(length, wanted)
        return test is not None and test.match(national) is not None

    def _length_test(self, length: int,
                     wanted: tuple[tuple[frozenset[int], re.Pattern[str]] | None, ...]) -> re.Pattern[str] | None:
        def applicable(descs: Iterable[tuple[frozenset[int], re.Pattern[str]] | None]) -> str | None:
            parts = [d[1].pattern for d in descs if d is not None and (not d[0] or length in d[0])]
            return "|".join(f"(?:{p})" for p in parts) if parts else None

        general, special, match = (applicable([self._general]), applicable(d for _kind, d in self._special),
                                   applicable(wanted))
        if general is None or match is None:
            return None
        avoid = "" if special is None else rf"(?!(?:{special})\Z)"
        return re.compile(rf"(?=(?:{general})\Z){avoid}(?:{match})\Z")

    def number_type(self, national: str) -> int:
        """The PhoneNumberType of a national significant number (digits) of this region."""
        if not self._matches(self._general, national):
            return PhoneNumberType.UNKNOWN
        for kind, desc in self._special:
            if self._matches(desc, national):
                return kind
        if self._matches(self._fixed, national):
            if self._same or self._matches(self._mobile, national):
                return PhoneNumberType.FIXED_LINE_OR_MOBILE
            return PhoneNumberType.FIXED_LINE
        if not self._same and self._matches(self._mobile, national):
            return PhoneNumberType.MOBILE
        return PhoneNumberType.UNKNOWN


@functools.cache
def _india_types() -> _TypeMatcher:
    return _TypeMatcher("IN")


def _indian_mobile_series(number: phonenumbers.PhoneNumber) -> bool:
    national = str(number.national_number)
    return number.country_code == 91 and len(national) == 10 and national[0] in "6789"


def _check_type(number: phonenumbers.PhoneNumber, digits: str, kind: int | None = None) -> str:
    if kind is None:
        kind = phonenumbers.number_type(number)
    if kind == PhoneNumberType.FIXED_LINE and _indian_mobile_series(number):
        return digits
    if kind == PhoneNumberType.UNKNOWN:  # not valid for any region of its country code
        possible = phonenumbers.is_possible_number_with_reason(number)
        reason = _POSSIBLE_REASONS.get(possible, "invalid")
        raise InvalidPhone(reason, f"not a valid number for country code +{number.country_code}")
    if kind not in _ACCEPTED_TYPES:
        label = PhoneNumberType.to_string(kind).lower()
        raise InvalidPhone("not_mobile", f"a {label} number, not a mobile")
    return digits


def is_wa_id(text: str) -> bool:
    """A WhatsApp id as the API writes it: 6-15 ASCII digits (E.164 without '+')."""
    return text.isascii() and text.isdigit() and 6 <= len(text) <= 15


def mask_phone(wa_id: str) -> str:
    """'919800000004' → '********0004': only the last 4 digits survive (logs, previews)."""
    text = wa_id or ""
    if len(text) <= 4:
        return "*" * len(text)
    return "*" * (len(text) - 4) + text[-4:]
