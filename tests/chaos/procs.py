"""Real processes for the reliability suite: the sandbox, the inbound receiver and workers, each a
`broadcaster` (or `python -m broadcaster.sandbox`) subprocess on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP_SECRET = "chaos-secret"
VERIFY_TOKEN = "chaos-verify"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(db_url: str, api_url: str | None = None, number: str = "106540352242922") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHATSAPP_", "BROADCASTER_"))}
    env.update(DATABASE_URL=db_url, WHATSAPP_TOKEN="chaos-token", WHATSAPP_PHONE_NUMBER_ID=number,
               WHATSAPP_APP_SECRET=APP_SECRET, WHATSAPP_VERIFY_TOKEN=VERIFY_TOKEN, PYTHONUNBUFFERED="1")
    if api_url:
        env["WHATSAPP_API_URL"] = api_url
    return env


class Sandbox:
    """`python -m broadcaster.sandbox` in its own process, controlled over HTTP."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broadcaster.sandbox", "--port", "0", "--app-secret", APP_SECRET,
             "--templates", str(ROOT / "examples" / "message_templates.json"), *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"(http://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"sandbox did not start: {line!r}")
        self.base_url = m.group(1)
        self.root = self.base_url.rsplit("/", 1)[0]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.root}/_sandbox/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "stats")

    def recipients(self) -> dict[str, int]:
        return self.call("GET", "recipients")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Cli:
    """A long-running `broadcaster …` command (worker, inbound serve)."""

    def __init__(self, env: dict[str, str], *args: str, log: Path | None = None) -> None:
        self.args = args
        self.log = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=self.log)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGINT (clean stop), then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
