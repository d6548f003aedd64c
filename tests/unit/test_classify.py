"""Classification of Cloud API answers: by error code first, HTTP status only as a fallback."""

from __future__ import annotations

import orjson
import pytest

from broadcaster.classify import Action, classify
from broadcaster.errors import (
    CampaignHaltError,
    OutcomeUnknown,
    PermanentSendError,
    ThrottledError,
    TransientSendError,
)
from broadcaster.transport import Lane


@pytest.mark.parametrize(("status", "code", "action"), [
    (400, 130429, Action.THROTTLE), (429, 130429, Action.THROTTLE), (400, 131056, Action.THROTTLE),
    (400, 80007, Action.THROTTLE), (400, 4, Action.THROTTLE), (429, None, Action.THROTTLE),
    (500, 131000, Action.TRANSIENT), (503, 131016, Action.TRANSIENT), (400, 2, Action.TRANSIENT),
    (502, None, Action.TRANSIENT),
    (400, 131026, Action.PERMANENT), (400, 131050, Action.PERMANENT), (400, 131049, Action.PERMANENT),
    (400, 132015, Action.HALT), (400, 132001, Action.HALT), (401, 190, Action.HALT), (400, 368, Action.HALT),
    (400, 132000, Action.HALT), (403, 200, Action.HALT),
    # HTTP status never overrides the code: a throttle code behind a 500 is still a throttle
    (500, 130429, Action.THROTTLE), (400, 999999, Action.PERMANENT),
])
def test_classify_by_code(status: int, code: int | None, action: Action) -> None:
    assert classify(status, code) is action


def graph_error(code: int, details: str = "d") -> bytes:
    return orjson.dumps({"error": {"message": f"(#{code}) x", "type": "OAuthException", "code": code,
                                   "error_data": {"messaging_product": "whatsapp", "details": details},
                                   "fbtrace_id": "A"}})


def test_success_shape_gives_wamid() -> None:
    body = orjson.dumps({"messaging_product": "whatsapp",
                         "contacts": [{"input": "+919876543210", "wa_id": "919876543210"}],
                         "messages": [{"id": "wamid.HBgM1", "message_status": "accepted"}]})
    result = Lane._interpret(200, body, [])
    assert (result.wamid, result.message_status) == ("wamid.HBgM1", "accepted")


def test_throttle_carries_retry_after() -> None:
    with pytest.raises(ThrottledError) as info:
        Lane._interpret(429, graph_error(130429), [(b"Retry-After", b"7")])
    assert info.value.retry_after == 7.0 and info.value.code == 130429 and not info.value.pair


def test_pair_rate_is_marked_pair() -> None:
    with pytest.raises(ThrottledError) as info:
        Lane._interpret(400, graph_error(131056), [])
    assert info.value.pair


@pytest.mark.parametrize(("code", "exc"), [(131000, TransientSendError), (131026, PermanentSendError),
                                           (132015, CampaignHaltError)])
def test_error_codes_map_to_exceptions(code: int, exc: type) -> None:
    with pytest.raises(exc, match=rf"^HTTP 400, code {code} \("):
        Lane._interpret(400, graph_error(code), [])


def test_200_without_message_id_is_unknown_not_success() -> None:
    with pytest.raises(OutcomeUnknown):
        Lane._interpret(200, b"{}", [])
