"""A report.html as a browser shows it: opened offline in headless Chromium, screenshotted,
checked for console errors, failed or external requests and undecoded images.

    python benchmarks/report_browser.py REPORT.html [--screenshot PNG] [--width 1280]
        [--height 1600] [--out DIR]

Chromium (Debian: ``apt-get install -y chromium``, ``/usr/bin/chromium``) runs headless
with a fresh profile and no background networking; the page is driven over the DevTools
protocol (``--remote-debugging-port``, a websocket on 127.0.0.1) by the small stdlib client
below, so no package beyond the venv's is needed and nothing is parsed from Chromium's log:
console messages (``Runtime.consoleAPICalled``, ``Log.entryAdded``), uncaught exceptions
(``Runtime.exceptionThrown``), every request the page makes (``Network.requestWillBeSent``:
only ``file:`` and ``data:`` URLs may load) and failed loads are events; after the load
event the page reports its images (each decoded: ``naturalWidth > 0``) and its section ids,
and ``Page.captureScreenshot`` gives the PNG, which must have the window's pixel size and
more than one colour. Writes ``report_browser.{json,md}`` to ``--out`` (default
``benchmarks/results/``); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")
LOCAL_SCHEMES = ("file:", "data:", "about:")
# what the page tells about itself after its load event
PAGE_FACTS = """JSON.stringify({
  title: document.title,
  images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]),
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  height: document.documentElement.scrollHeight,
  width: document.documentElement.scrollWidth})"""


class WebSocket:
    """The client side of RFC 6455, as much as the DevTools protocol needs: masked text
    frames out, (possibly fragmented) text frames in, pings answered."""

    def __init__(self, url: str, timeout: float) -> None:
        assert url.startswith("ws://"), url
        hostport, _, path = url[len("ws://"):].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        status, _, self.buffer = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise ConnectionError(f"websocket handshake refused: {status[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send(self, text: str) -> None:
        self._send(0x1, text.encode())

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else b""
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


class DevTools:
    """Commands and events of one page target."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not any(e["method"] == event for e in self.events):
            if time.monotonic() > end:
                raise TimeoutError(f"no {event} within {timeout:.0f} s")
            self.events.append(json.loads(self.ws.recv()))


def _port(profile: Path, proc: subprocess.Popen, timeout: float) -> int:
    """The DevTools port Chromium chose (its ``DevToolsActivePort`` file)."""
    path = profile / "DevToolsActivePort"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().split()[0])
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}: "
                               f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
        time.sleep(0.05)
    raise TimeoutError(f"chromium wrote no DevToolsActivePort within {timeout:.0f} s")


def _problems(events: list[dict]) -> dict[str, list[str]]:
    """Console errors and warnings, exceptions, non-local and failed requests."""
    out: dict[str, list[str]] = {"console": [], "exceptions": [], "external_requests": [],
                                 "failed_requests": []}
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            out["console"].append(f"{p['type']}: " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
            out["console"].append(f"{p['entry']['level']}: {p['entry'].get('text', '')}")
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out["exceptions"].append(d.get("exception", {}).get("description") or d.get("text"))
        elif m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith(LOCAL_SCHEMES):
                out["external_requests"].append(url[:200])
        elif m == "Network.loadingFailed":
            out["failed_requests"].append(f"{p.get('errorText')}: {p.get('requestId')}")
    return out


def screenshot_facts(png: bytes) -> dict:
    """Pixel size and how many colours (a blank page has one)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    return {"width": img.width, "height": img.height,
            "colours": len(colours) if colours is not None else 1 << 20}


def check_report(report: str | Path, screenshot: str | Path, expect: Sequence[str] = (),
                 width: int = 1280, height: int = 1600, chromium: str = CHROMIUM,
                 timeout: float = 60.0) -> dict:
    """Open ``report`` in headless Chromium, save a ``width`` x ``height`` screenshot to
    ``screenshot`` and return what was seen, with ``failures`` (empty: every check passed)
    for: console errors or warnings, exceptions, external or failed requests, an image
    that did not decode, a section of ``expect`` missing, a screenshot of another size or
    of one colour."""
    report = Path(report).resolve()
    t0 = time.perf_counter()
    profile = Path(tempfile.mkdtemp(prefix="fedad-chromium-"))
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}",
                             f"--window-size={width},{height}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = _port(profile, proc, timeout)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            targets = json.loads(r.read())
        target = next(t for t in targets if t.get("type") == "page")
        ws = WebSocket(target["webSocketDebuggerUrl"], timeout)
        dt = DevTools(ws)
        for domain in ("Runtime", "Log", "Network", "Page"):
            dt.call(f"{domain}.enable")
        dt.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                deviceScaleFactor=1, mobile=False)
        started = time.perf_counter()
        dt.call("Page.navigate", url=report.as_uri())
        dt.wait_for("Page.loadEventFired", timeout)
        load_seconds = time.perf_counter() - started
        facts = json.loads(dt.call("Runtime.evaluate", expression=PAGE_FACTS,
                                   returnByValue=True)["result"]["value"])
        shot = base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"])
        problems = _problems(dt.events)
        try:
            dt.call("Browser.close")
        except (ConnectionError, OSError, RuntimeError):
            pass
        ws.close()
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
    Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
    Path(screenshot).write_bytes(shot)
    shot_facts = screenshot_facts(shot)
    broken = [i for i, (done, w, _) in enumerate(facts["images"]) if not done or w == 0]
    failures = [f"{k}: {v}" for k, v in problems.items() if v]
    failures += [f"image {i} did not decode" for i in broken]
    failures += [f"section #{s} missing" for s in expect if s not in facts["sections"]]
    if not facts["images"]:
        failures.append("no image on the page")
    if (shot_facts["width"], shot_facts["height"]) != (width, height):
        failures.append(f"screenshot is {shot_facts['width']}x{shot_facts['height']}, not "
                        f"{width}x{height}")
    if shot_facts["colours"] < 2:
        failures.append("screenshot is a single colour (blank page)")
    return {"report": str(report), "report_bytes": report.stat().st_size,
            "screenshot": str(screenshot), "screenshot_bytes": len(shot),
            "screenshot_size": [shot_facts["width"], shot_facts["height"]],
            "screenshot_colours": shot_facts["colours"], "title": facts["title"],
            "images": len(facts["images"]), "broken_images": broken,
            "sections": facts["sections"], "page_height": facts["height"],
            "page_width": facts["width"], **problems, "load_seconds": load_seconds,
            "seconds": time.perf_counter() - t0, "failures": failures}


def chromium_version(chromium: str = CHROMIUM) -> str:
    return subprocess.run([chromium, "--version"], capture_output=True, text=True,
                          check=False).stdout.strip()


def expected_sections(report: str | Path) -> list[str]:
    """The section ids a run's (or, without a ``final`` section, a sweep's) page has."""
    from fedad.evaluation.html_report import RUN_SECTIONS, SWEEP_SECTIONS

    text = Path(report).read_text(encoding="utf-8")
    kinds = RUN_SECTIONS if 'id="final"' in text else SWEEP_SECTIONS
    return [anchor for anchor, _ in kinds]


def markdown(res: dict) -> str:
    verdict = "passed" if not res["failures"] else "FAILED: " + "; ".join(res["failures"])
    rows = [("report", f"`{res['report_name']}`, {res['report_bytes'] / 1e6:.2f} MB"),
            ("browser", res["chromium"]),
            ("load event", f"{res['load_seconds']:.2f} s after navigation "
                           f"({res['seconds']:.1f} s with start and screenshot)"),
            ("images decoded", f"{res['images'] - len(res['broken_images'])} of {res['images']}"),
            ("sections", ", ".join(res["sections"])),
            ("console errors / warnings", str(len(res["console"]))),
            ("uncaught exceptions", str(len(res["exceptions"]))),
            ("requests beyond file: and data:", str(len(res["external_requests"]))),
            ("failed requests", str(len(res["failed_requests"]))),
            ("screenshot", f"{res['screenshot_size'][0]}x{res['screenshot_size'][1]} px, "
                           f"{res['screenshot_colours']} colours, "
                           f"{res['screenshot_bytes'] / 1e3:.0f} kB"),
            ("page", f"{res['page_width']}x{res['page_height']} px")]
    md = ["# report.html in headless Chromium", "", f"Result: **{verdict}**.", "",
          "| check | result |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
          f"Command: `{res['command']}`", ""]
    return "\n".join(md)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import RESULTS, command_line, machine, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="where the PNG goes (default: beside the results)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not Path(args.chromium).is_file():
        print(f"{args.chromium}: no such browser (Debian: apt-get install -y chromium)")
        return 2
    shot = args.screenshot or args.out / "report_browser.png"
    res = check_report(args.report, shot, expected_sections(args.report), args.width,
                       args.height, args.chromium)
    res.update(report=str(args.report), report_name=args.report.name,
               chromium=chromium_version(args.chromium),
               command=command_line(), machine=machine())
    write_results(args.out, "report_browser", res, markdown(res))
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
