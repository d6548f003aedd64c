"""Phone normalisation: every written form of one number, rejections with reasons, the fast path."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segments.phones import InvalidPhone, _india_types, _normalize_full, mask_phone, normalize_phone

FORMS = [
    "+91 98000 00004", "09800000004", "0091 9800000004", "919800000004", "9800000004",
    "(+91) 98000.00004", " 9800000004 ", "+919800000004", "098000-00004", "0091-9800000004",
    "+91-980-000-0004", "९८०००००००४",
]


@pytest.mark.parametrize("raw", FORMS)
def test_every_written_form_gives_the_same_wa_id(raw: str) -> None:
    assert normalize_phone(raw) == "919800000004"


@pytest.mark.parametrize(("raw", "reason"), [
    ("", "empty"),
    ("   ", "empty"),
    ("12345", "too_short"),
    ("98765ABCDE", "not_a_number"),     # libphonenumber would read the letters as a vanity number
    ("n/a", "not_a_number"),
    ("0", "not_a_number"),
    ("+919800000004x12", "not_a_number"),
    ("++919800000004", "not_a_number"),
    ("91+9800000004", "not_a_number"),
    ("+91 12345 67890", "not_mobile"),  # valid, but a fixed line
    ("+91 22 2345 6789", "not_mobile"),  # Mumbai landline
    ("1800 123 4567", "not_mobile"),     # toll free
    ("0442345678", "invalid"),           # landline-looking, too short for a valid number
    ("99999999999999", "too_long"),
    ("+44 7700 900123", "invalid"),       # UK drama range: not assigned
    ("9" * 70, "not_a_number"),
])
def test_invalid_numbers_are_rejected_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidPhone, match=rf"^{reason}") as info:
        normalize_phone(raw)
    assert info.value.reason == reason


def test_the_message_never_repeats_the_number() -> None:
    with pytest.raises(InvalidPhone) as info:
        normalize_phone("+91 12345 67890")
    assert "12345" not in str(info.value)


@pytest.mark.parametrize(("raw", "expected"), [
    ("+971 50 1234567", "971501234567"),
    ("+55 11 91234 5678", "5511912345678"),
    ("+1 415 555 2671", "14155552671"),     # NANP: FIXED_LINE_OR_MOBILE is accepted
    ("+44 7911 123456", "447911123456"),
])
def test_foreign_mobiles_written_with_country_code_are_accepted(raw: str, expected: str) -> None:
    assert normalize_phone(raw) == expected


def test_default_region_applies_to_numbers_without_country_code() -> None:
    assert normalize_phone("07911 123456", default_region="GB") == "447911123456"
    assert normalize_phone("+91 98000 00004", default_region="GB") == "919800000004"


def test_fast_path_agrees_with_libphonenumber() -> None:
    """The compiled type matcher gives phonenumbers.number_type's answer for Indian numbers."""
    rng = random.Random(2026)
    matcher = _india_types()
    accepted = (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)
    for _ in range(20_000):
        national = rng.choice("6789") + "".join(rng.choice("0123456789") for _ in range(9))
        number = phonenumbers.PhoneNumber(country_code=91, national_number=int(national))
        kind = phonenumbers.number_type(number)
        assert matcher.number_type(national) == kind, national
        assert matcher.accepts(national) == (kind in accepted), national
        assert matcher.mobile_or_fixed(national) == (
            kind in (*accepted, phonenumbers.PhoneNumberType.FIXED_LINE)), national


@settings(max_examples=500)
@given(st.from_regex(r"[ (]?(\+91|0091|91|0)?[) .-]?[6-9][0-9]{2}[ .-]?[0-9]{2}[ .-]?[0-9]{5} ?", fullmatch=True))
def test_fast_path_equals_full_parse(raw: str) -> None:
    number = phonenumbers.parse(raw, "IN")
    kind = phonenumbers.number_type(number)
    accepted = kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE) or (
        kind == phonenumbers.PhoneNumberType.FIXED_LINE and len(str(number.national_number)) == 10
        and str(number.national_number)[0] in "6789")
    if accepted:
        assert normalize_phone(raw) == f"{number.country_code}{number.national_number}"
    else:
        with pytest.raises(InvalidPhone):
            normalize_phone(raw)


@given(st.text(max_size=40))
def test_any_text_is_normalised_or_rejected_never_crashes(raw: str) -> None:
    try:
        out = normalize_phone(raw)
    except InvalidPhone as exc:
        assert exc.reason in InvalidPhone.REASONS
    else:
        assert out.isdigit() and out.isascii() and 8 <= len(out) <= 15


def test_mask_keeps_only_the_last_four_digits() -> None:
    assert mask_phone("919800000004") == "********0004"
    assert mask_phone("123") == "***"


@pytest.mark.parametrize("raw", ["+917651676122", "+91 66723 26865", "+91 80234 48347"])
def test_indian_mobile_series_accepted_where_libphonenumber_says_fixed_line(raw: str) -> None:
    number = phonenumbers.parse(raw, "IN")
    assert phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.FIXED_LINE
    assert normalize_phone(raw) == f"91{number.national_number}"


def _outcome(normalize: object, raw: str) -> tuple[str, str]:
    try:
        return ("ok", normalize(raw))  # type: ignore[operator]
    except InvalidPhone as exc:
        return ("rejected", exc.reason)


@settings(max_examples=1000)
@given(st.one_of(
    st.from_regex(r"[ (]?(\+91|0091|91|0|\+)?[) .-]?[0-9]{2,4}[ .-]?[0-9]{2,4}[ .-]?[0-9]{2,6} ?", fullmatch=True),
    st.text(alphabet="+0123456789 -.()", max_size=20),
))
def test_fast_path_gives_the_full_parse_outcome_and_reason(raw: str) -> None:
    """The Indian shortcut (bare digits, then a regex and the compiled type test) never changes
    an answer: the same wa_id, or the same rejection reason, as libphonenumber's full parse."""
    assert _outcome(normalize_phone, raw) == _outcome(lambda r: _normalize_full(r, "IN"), raw)
