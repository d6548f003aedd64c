"""X-Hub-Signature-256 over raw bytes and the GET verification handshake (API doc §4.1-4.2)."""

from __future__ import annotations

import hashlib
import hmac

import orjson
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.inbound.signature import handshake_challenge, sign, verify_signature

SECRET = "app-secret-ü-🔑"

# A real-shaped inbound text with Devanagari and emoji: the signature covers these exact bytes.
BODY = orjson.dumps({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [
    {"field": "messages", "value": {"messaging_product": "whatsapp", "messages": [
        {"from": "919876543210", "id": "wamid.HBgLOTE5ODc2NTQzMjEw", "timestamp": "1749416383",
         "type": "text", "text": {"body": "नमस्ते! क्या यह दूसरे रंग में आता है? 🎨🔥 café"}}]}}]}]})


def _pywa(body: bytes, secret: str) -> str:
    """pywa's computation (API doc §4.2), the reference."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_sign_matches_the_reference_over_non_ascii_and_emoji_bytes() -> None:
    assert any(b > 0x7F for b in BODY)
    assert sign(BODY, SECRET) == _pywa(BODY, SECRET)
    assert verify_signature(BODY, _pywa(BODY, SECRET), SECRET)


def test_reserialised_json_does_not_verify() -> None:
    """Parsing then re-encoding changes the bytes (escaping, spacing): the check must use raw bytes."""
    reencoded = orjson.dumps(orjson.loads(BODY), option=orjson.OPT_INDENT_2)
    assert not verify_signature(reencoded, sign(BODY, SECRET), SECRET)


def test_one_flipped_byte_fails() -> None:
    tampered = BODY.replace("🎨".encode(), "🎭".encode())
    assert not verify_signature(tampered, sign(BODY, SECRET), SECRET)


def test_wrong_secret_fails() -> None:
    assert not verify_signature(BODY, sign(BODY, "another-secret"), SECRET)


def test_upper_case_hex_and_spaces_are_accepted() -> None:
    header = sign(BODY, SECRET)
    assert verify_signature(BODY, "  SHA256=" + header[7:].upper() + " ", SECRET)


def test_missing_or_malformed_headers_fail_without_raising() -> None:
    for header in (None, "", "sha256=", "sha1=" + sign(BODY, SECRET)[7:], sign(BODY, SECRET)[7:],
                   "sha256=zz", "sha256=" + "é" * 64, "sha256=🔥"):
        assert not verify_signature(BODY, header, SECRET), header


def test_no_secret_configured_never_verifies() -> None:
    assert not verify_signature(BODY, sign(BODY, ""), "")


@given(st.binary(max_size=2048), st.text(min_size=1, max_size=40))
def test_sign_then_verify_round_trips(body: bytes, secret: str) -> None:
    assert verify_signature(body, sign(body, secret), secret)
    assert not verify_signature(body + b"x", sign(body, secret), secret)


def test_handshake_echoes_the_raw_challenge() -> None:
    query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "tok-ü"}
    assert handshake_challenge(query, "tok-ü") == "1158201444"


def test_handshake_wrong_token_mode_or_missing_parts_is_refused() -> None:
    good = {"hub.mode": "subscribe", "hub.challenge": "42", "hub.verify_token": "tok"}
    assert handshake_challenge({**good, "hub.verify_token": "TOK"}, "tok") is None
    assert handshake_challenge({**good, "hub.mode": "unsubscribe"}, "tok") is None
    assert handshake_challenge({k: v for k, v in good.items() if k != "hub.verify_token"}, "tok") is None
    assert handshake_challenge({k: v for k, v in good.items() if k != "hub.challenge"}, "tok") is None
    assert handshake_challenge(good, None) is None
    assert handshake_challenge({**good, "hub.verify_token": ""}, "") is None
