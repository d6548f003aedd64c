"""The sandbox over real sockets on 127.0.0.1: send path, Graph errors, limits, faults, paging."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
import trio

from broadcaster.sandbox import SandboxConfig, SandboxThread, serve_sandbox

NUMBER = "106540352242922"
AUTH = {"authorization": "Bearer test-token"}
TEMPLATES = json.loads((Path(__file__).resolve().parents[2] / "examples"
                        / "message_templates.json").read_text(encoding="utf-8"))["data"]


@asynccontextmanager
async def running(**config: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A sandbox in this test's nursery and a client on its base URL (auth header set)."""
    config.setdefault("templates", TEMPLATES)
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve_sandbox, SandboxConfig(**config))
        async with httpx.AsyncClient(base_url=base_url + "/", headers=AUTH, timeout=5) as client:
            yield client
        nursery.cancel_scope.cancel()


def root(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/").rsplit("/", 1)[0]


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    return (await client.get(f"{root(client)}/_sandbox/stats")).json()


def invite(to: str = "+919876543210", params: int = 4, **extra: Any) -> dict[str, Any]:
    """A daily_campaign_invite (hi) send: 4 body params and the URL button's suffix."""
    return {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
        "type": "template", **extra,
        "template": {
            "name": "daily_campaign_invite", "language": {"code": "hi"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": f"v{i}"}
                                                for i in range(params)]},
                {"type": "button", "sub_type": "url", "index": "0",
                 "parameters": [{"type": "text", "text": "c-42"}]},
            ],
        },
    }


async def send(client: httpx.AsyncClient, payload: Any, **kw: Any) -> httpx.Response:
    return await client.post(f"{NUMBER}/messages", json=payload, **kw)


def assert_graph_error(response: httpx.Response, code: int, status: int = 400) -> dict[str, Any]:
    """The §2.1 envelope with `code`; returns the error object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"].startswith(f"(#{code}) ")
    assert error["type"] == "OAuthException"
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert isinstance(error["error_data"]["details"], str) and error["error_data"]["details"]
    assert isinstance(error["fbtrace_id"], str)
    return error


# --------------------------------------------------------------------------- success and auth


async def test_accepted_send_has_the_success_shape_and_unique_wamids() -> None:
    async with running() as client:
        ids = set()
        for i in range(20):
            r = await send(client, invite(f"+9198765432{i:02d}", biz_opaque_callback_data="c:1"))
            assert r.status_code == 200
            body = r.json()
            assert set(body) == {"messaging_product", "contacts", "messages"}
            assert body["messaging_product"] == "whatsapp"
            assert body["contacts"] == [{"input": f"+9198765432{i:02d}",
                                         "wa_id": f"9198765432{i:02d}"}]
            [message] = body["messages"]
            assert message["message_status"] == "accepted"
            assert message["id"].startswith("wamid.")
            ids.add(message["id"])
        assert len(ids) == 20
        s = await stats(client)
        assert (s["requests"], s["accepted"], s["recipients"], s["duplicates"]) == (20, 20, 20, 0)
        recent = (await client.get(f"{root(client)}/_sandbox/messages?limit=5")).json()
        assert [m["to"] for m in recent] == [f"+9198765432{i}" for i in range(15, 20)]
        assert recent[-1]["biz_opaque_callback_data"] == "c:1"


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer"},
                                     {"authorization": "Basic dXNlcg=="},
                                     {"authorization": "Bearer wrong"}])
async def test_bad_or_missing_token_is_401_code_190(headers: dict[str, str]) -> None:
    async with running(token="test-token") as client:
        client.headers.pop("authorization")
        r = await send(client, invite(), headers=headers)
        assert_graph_error(r, 190, 401)
        assert (await stats(client))["rejected_by_code"] == {"190": 1}


async def test_any_bearer_token_is_accepted_when_none_is_configured() -> None:
    async with running(token=None) as client:
        r = await send(client, invite(), headers={"authorization": "Bearer anything"})
        assert r.status_code == 200
        client.headers.pop("authorization")
        assert_graph_error(await send(client, invite()), 190, 401)


# --------------------------------------------------------------------------- validation


async def test_invalid_json_is_code_100() -> None:
    async with running() as client:
        r = await client.post(f"{NUMBER}/messages", content=b"{not json",
                              headers={"content-type": "application/json"})
        error = assert_graph_error(r, 100)
        assert "not valid JSON" in error["error_data"]["details"]


@pytest.mark.parametrize(("mutate", "code"), [
    (lambda p: p.pop("messaging_product"), 100),
    (lambda p: p.pop("type"), 100),
    (lambda p: p.update(type="hologram"), 100),
    (lambda p: p.pop("to"), 131008),
    (lambda p: p.update(to="98765"), 131009),
    (lambda p: p.update(to="+91 98765 abc"), 131009),
    (lambda p: p["template"].update(name="no_such_template"), 132001),
    (lambda p: p["template"].update(language={"code": "fr"}), 132001),
    (lambda p: p["template"].update(name="diwali_special"), 132001),  # PENDING
    (lambda p: p["template"].update(name="weekly_earnings"), 132015),  # PAUSED
    (lambda p: p["template"]["components"][0]["parameters"].pop(), 132000),
    (lambda p: p["template"]["components"].pop(), 132000),  # URL button suffix missing
    (lambda p: p["template"]["components"][0]["parameters"][0].update(text="a\nb"), 132018),
    (lambda p: p["template"]["components"][0]["parameters"][0].update(text="a     b"), 132018),
    (lambda p: p["template"]["components"][0]["parameters"][0].update(
        parameter_name="first_name"), 132018),
    (lambda p: p["template"]["components"][0]["parameters"][0].update(text="x" * 1100), 132005),
])
async def test_bad_sends_get_the_documented_code(mutate: Any, code: int) -> None:
    async with running() as client:
        payload = invite()
        mutate(payload)
        assert_graph_error(await send(client, payload), code)
        s = await stats(client)
        assert (s["accepted"], s["rejected_by_code"]) == (0, {str(code): 1})


async def test_named_template_needs_its_names() -> None:
    def tips(params: list[dict[str, str]]) -> dict[str, Any]:
        return {"messaging_product": "whatsapp", "to": "+919876543210", "type": "template",
                "template": {"name": "creator_tips_update", "language": {"code": "en"},
                             "components": [{"type": "body", "parameters": params}]}}

    async with running() as client:
        good = [{"type": "text", "parameter_name": "tip_link", "text": "https://x.in/t"},
                {"type": "text", "parameter_name": "first_name", "text": "Priya"}]
        assert (await send(client, tips(good))).status_code == 200
        wrong_name = [good[0], {**good[1], "parameter_name": "name"}]
        assert_graph_error(await send(client, tips(wrong_name)), 132000)
        positional = [{"type": "text", "text": "Priya"}, {"type": "text", "text": "x"}]
        assert_graph_error(await send(client, tips(positional)), 132018)
        mixed = [good[0], {"type": "text", "text": "Priya"}]
        assert_graph_error(await send(client, tips(mixed)), 132018)


async def test_image_header_must_be_an_image() -> None:
    def nudge(header: dict[str, Any]) -> dict[str, Any]:
        body = [{"type": "text", "text": "Amit"}, {"type": "text", "text": "12"}]
        return {"messaging_product": "whatsapp", "to": "+919876543210", "type": "template",
                "template": {"name": "reactivation_nudge", "language": {"code": "en"},
                             "components": [{"type": "header", "parameters": [header]},
                                            {"type": "body", "parameters": body}]}}

    async with running() as client:
        image = {"type": "image", "image": {"link": "https://cdn.example.in/p.jpg"}}
        assert (await send(client, nudge(image))).status_code == 200
        assert_graph_error(await send(client, nudge({"type": "text", "text": "hi"})), 132012)


async def test_paused_by_fault_injection_then_restored() -> None:
    async with running() as client:
        r = await client.post(f"{root(client)}/_sandbox/faults",
                              json={"template_status": {"daily_campaign_invite/hi": "PAUSED"}})
        assert r.status_code == 200
        assert_graph_error(await send(client, invite()), 132015)
        await client.post(f"{root(client)}/_sandbox/faults", json={})
        assert (await send(client, invite())).status_code == 200


# --------------------------------------------------------------------------- limits


async def test_sends_over_mps_get_130429() -> None:
    """mps=5: in any 1-s window at most 5 are accepted; the rest get §2.1's 130429."""
    async with running(mps=5) as client:
        responses = [await send(client, invite(f"+9198765400{i:02d}")) for i in range(20)]
        accepted = [r for r in responses if r.status_code == 200]
        throttled = [r for r in responses if r.status_code != 200]
        for r in throttled:
            error = assert_graph_error(r, 130429)
            assert error["error_data"]["details"] == "Cloud API message throughput has been reached."
            assert error["error_subcode"] == 2494055
        assert 5 <= len(accepted) <= 10  # 20 quick sends may straddle one window boundary
        s = await stats(client)
        assert s["max_per_second"] == {NUMBER: 5}
        assert s["rejected_by_code"] == {"130429": len(throttled)}
        assert sum(n for _, n in s["per_second"]) == len(accepted)


async def test_mps_can_be_lifted_at_run_time() -> None:
    async with running(mps=1) as client:
        await send(client, invite())
        r = await client.post(f"{root(client)}/_sandbox/config", json={"mps": 0})
        assert r.json()["mps"] == 0
        assert all([(await send(client, invite())).status_code == 200 for _ in range(10)])
        r = await client.post(f"{root(client)}/_sandbox/config", json={"token": "x"})
        assert r.status_code == 400 and "config field token" in r.json()["error"]["message"]


async def test_pair_interval_gives_131056_for_that_recipient_only() -> None:
    async with running(pair_interval_s=60.0) as client:
        assert (await send(client, invite("+919800000001"))).status_code == 200
        assert_graph_error(await send(client, invite("+919800000001")), 131056)
        assert (await send(client, invite("+919800000002"))).status_code == 200


async def test_throttle_next_sends_retry_after() -> None:
    async with running() as client:
        await client.post(f"{root(client)}/_sandbox/faults",
                          json={"throttle_next": 2, "retry_after_s": 1.5})
        for _ in range(2):
            r = await send(client, invite())
            assert_graph_error(r, 130429)
            assert r.headers["retry-after"] == "2"
        assert (await send(client, invite())).status_code == 200


# --------------------------------------------------------------------------- faults


async def test_error_rate_injects_the_code() -> None:
    async with running() as client:
        await client.post(f"{root(client)}/_sandbox/faults",
                          json={"error_rate": {"131000": 1.0}})
        assert_graph_error(await send(client, invite()), 131000, 500)
        await client.post(f"{root(client)}/_sandbox/faults", json={"error_rate": {"131016": 1}})
        assert_graph_error(await send(client, invite()), 131016, 503)
        assert (await stats(client))["accepted"] == 0


async def test_error_rate_share_is_seeded_and_close_to_the_rate() -> None:
    async def run() -> list[int]:
        async with running(seed=7, mps=0) as client:
            await client.post(f"{root(client)}/_sandbox/faults",
                              json={"error_rate": {"131000": 0.25}})
            return [(await send(client, invite())).status_code for _ in range(200)]

    first, second = await run(), await run()
    assert first == second
    assert 30 <= first.count(500) <= 70


async def test_reset_fault_drops_the_connection_but_counts_the_send() -> None:
    async with running() as client:
        await client.post(f"{root(client)}/_sandbox/faults", json={"reset_rate": 1.0})
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await send(client, invite())
        s = await stats(client)
        assert (s["accepted"], s["faults"]) == (1, {"resets": 1})


async def test_cut_body_fault_gives_an_incomplete_response() -> None:
    async with running() as client:
        await client.post(f"{root(client)}/_sandbox/faults", json={"cut_body_rate": 1.0})
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete|peer closed"):
            await send(client, invite())
        assert (await stats(client))["accepted"] == 1


async def test_timeout_fault_stalls_until_reset() -> None:
    async with running(stall_s=60.0) as client:
        await client.post(f"{root(client)}/_sandbox/faults", json={"timeout_rate": 1.0})
        with pytest.raises(httpx.ReadTimeout):
            await send(client, invite(), timeout=0.3)
        assert (await stats(client))["faults"] == {"timeouts": 1}
        await client.post(f"{root(client)}/_sandbox/reset")
        assert (await send(client, invite())).status_code == 200
        s = await stats(client)
        assert (s["accepted"], s["faults"]) == (1, {})


@pytest.mark.parametrize(("plan", "message"), [
    ({"error_rate": {"131000": 2}}, "faults field error_rate.131000: 2 is not a probability"),
    ({"reset_rate": "x"}, "faults field reset_rate: 'x' is not a probability"),
    ({"bogus": 1}, "faults field bogus: unknown"),
    ({"template_status": {"a": "PAUSED"}}, "faults field template_status.a: expected"),
    ({"throttle_next": -1}, "faults field throttle_next: -1 is not a count"),
])
async def test_bad_fault_plans_are_rejected_naming_the_field(plan: dict[str, Any],
                                                             message: str) -> None:
    async with running() as client:
        r = await client.post(f"{root(client)}/_sandbox/faults", json=plan)
        assert r.status_code == 400
        assert r.json()["error"]["message"].startswith(message)


# --------------------------------------------------------------------------- control, paging


async def test_stats_recipients_and_reset() -> None:
    async with running() as client:
        for to in ["+919800000001", "+919800000001", "+919800000002"]:
            await send(client, invite(to))
        await send(client, {"messaging_product": "whatsapp"})
        s = await stats(client)
        assert (s["requests"], s["accepted"], s["recipients"], s["duplicates"]) == (4, 3, 2, 1)
        assert s["rejected_by_code"] == {"131008": 1}
        recipients = (await client.get(f"{root(client)}/_sandbox/recipients")).json()
        assert recipients == {"919800000001": 2, "919800000002": 1}
        await client.post(f"{root(client)}/_sandbox/reset")
        s = await stats(client)
        assert (s["requests"], s["accepted"], s["recipients"], s["per_second"]) == (0, 0, 0, [])


async def test_template_paging_is_followed_to_the_end() -> None:
    async with running(waba_id="555") as client:
        url: str | None = f"{client.base_url}555/message_templates?limit=3"
        seen: list[tuple[str, str]] = []
        pages = 0
        while url:
            r = await client.get(url)
            assert r.status_code == 200
            page = r.json()
            assert len(page["data"]) <= 3 and set(page["paging"]["cursors"]) == {"before",
                                                                                  "after"}
            seen += [(t["name"], t["language"]) for t in page["data"]]
            url = page["paging"].get("next")
            assert url is None or url.startswith("http://127.0.0.1:")
            pages += 1
        assert seen == [(t["name"], t["language"]) for t in TEMPLATES]
        assert pages == 7  # 20 templates, 3 a page
        assert_graph_error(await client.get("999/message_templates"), 100)


async def test_oversized_body_gets_413_without_the_body_being_read() -> None:
    async with running() as client:
        port = client.base_url.port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /v25.0/1/messages HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Length: 5000000\r\n\r\n" + b"x" * 1000)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 413 ")
        await stream.aclose()


async def test_one_keep_alive_connection_serves_many_requests() -> None:
    async with running(mps=0) as client:
        port = client.base_url.port
        origin = httpcore.Origin(b"http", b"127.0.0.1", port)
        body = json.dumps(invite()).encode()
        async with httpcore.AsyncHTTPConnection(origin) as conn:  # never reconnects
            for _ in range(300):
                r = await conn.request("POST", f"http://127.0.0.1:{port}/v25.0/{NUMBER}/messages",
                                       headers={**AUTH, "content-type": "application/json"},
                                       content=body)
                assert r.status == 200
            assert conn.info().endswith("HTTP/1.1, IDLE, Request Count: 300")


def test_sandbox_thread_runs_and_stops() -> None:
    thread = SandboxThread(SandboxConfig(templates=TEMPLATES, mps=0))
    with pytest.raises(RuntimeError, match=r"^SandboxThread is not started"):
        _ = thread.base_url
    with thread as sandbox:
        assert sandbox.base_url.startswith("http://127.0.0.1:")
        r = httpx.post(f"{sandbox.base_url}/{NUMBER}/messages", json=invite(), headers=AUTH)
        assert r.status_code == 200
        assert sandbox.stats()["accepted"] == 1
        assert sandbox.messages(1)[0]["to"] == "+919876543210"
        sandbox.reset()
        assert sandbox.stats()["accepted"] == 0
    assert not sandbox.is_running()
    port = int(sandbox.base_url.rsplit(":", 1)[1].split("/")[0])
    with SandboxThread(SandboxConfig(port=port)), pytest.raises(
            RuntimeError, match=r"^sandbox failed to start"), SandboxThread(
            SandboxConfig(port=port)):
        pass
