"""The HTML report renders in headless Chromium: a real screenshot, non-blank, with the charts' colours.

Needs Debian's `chromium` at /usr/bin/chromium (`scripts/ensure-chromium.sh` installs it); skips
without it.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
import trio

from broadcaster.db import Database
from broadcaster.report_export import full_report, write_html
from tests.integration.test_report_export import _crafted

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="headless Chromium not installed at /usr/bin/chromium: "
                                       "run scripts/ensure-chromium.sh (apt-get install chromium)")


def read_png(data: bytes) -> tuple[int, int, Counter[tuple[int, int, int]]]:
    """A tiny PNG decoder (8-bit RGB/RGBA, non-interlaced, all five filters): width, height and a
    count of pixels per RGB colour."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    low7, high1 = int.from_bytes(b"\x7f" * stride, "big"), int.from_bytes(b"\x80" * stride, "big")
    prev = bytes(stride)
    colours: Counter[tuple[int, int, int]] = Counter()
    for y in range(height):
        filt = raw[y * (stride + 1)]
        line = raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)]
        if filt == 2:  # Up: bytewise (line + prev) mod 256, all bytes at once (carry-free SWAR add)
            a, b = int.from_bytes(line, "big"), int.from_bytes(prev, "big")
            line = (((a & low7) + (b & low7)) ^ ((a ^ b) & high1)).to_bytes(stride, "big")
        elif filt in (1, 3, 4):
            out = bytearray(line)
            for i in range(stride):
                left = out[i - channels] if i >= channels else 0
                if filt == 1:
                    out[i] = (out[i] + left) & 0xFF
                elif filt == 3:
                    out[i] = (out[i] + ((left + prev[i]) >> 1)) & 0xFF
                else:
                    up = prev[i]
                    ul = prev[i - channels] if i >= channels else 0
                    pa, pb, pc = abs(up - ul), abs(left - ul), abs(left + up - 2 * ul)
                    out[i] = (out[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else ul)) & 0xFF
            line = bytes(out)
        colours.update(zip(line[0::channels], line[1::channels], line[2::channels], strict=True))
        prev = line
    return width, height, colours


async def test_html_report_screenshot_in_headless_chromium(db: Database, uniq: str, phone_factory,
                                                            tmp_path: Path) -> None:
    name, _, _ = await _crafted(db, uniq, phone_factory)
    page = tmp_path / "report.html"
    await write_html(await full_report(db, name), page)
    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
           page.resolve().as_uri()]
    with trio.fail_after(90):
        done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    assert shot.exists(), f"chromium exited {done.returncode}: {done.stderr.decode()[-2000:]}"
    data = shot.read_bytes()
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes"

    width, height, colours = await trio.to_thread.run_sync(read_png, data)
    assert (width, height) == (1200, 1600)
    background_share = colours.most_common(1)[0][1] / (width * height)
    assert background_share < 0.9, "the page is (almost) one colour: blank render"
    assert len(colours) > 200, f"only {len(colours)} distinct colours"
    # the charts drew: the funnel/timeline green, failure red and latency blue bars are all there
    for name_, rgb in (("green", (0x2E, 0x9E, 0x5B)), ("red", (0xD6, 0x45, 0x45)), ("blue", (0x3B, 0x6F, 0xD6))):
        assert colours[rgb] > 500, f"no {name_} chart bars in the screenshot"
