"""Open an HTML file in headless Chromium, offline, and collect console errors and a screenshot.

A tiny Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (Chromium reads commands
from fd 3 and writes replies/events to fd 4, NUL-separated JSON), so no websocket library and no
network port are needed. Used by the tests to check that ``report.html`` renders cleanly; also
handy by hand: ``python -m npeff.report.browser_check report.html shot.png``.

What counts as an error: ``console.error``/``console.assert`` calls, uncaught exceptions, Log
entries of level "error" (e.g. a resource that failed to load) and any request to a non-local URL
(http/https/ws, blocked so the check never touches the network).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from npeff.errors import NpeffFileNotFoundError

DEFAULT_CHROMIUM = "/usr/bin/chromium"
_LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome:", "devtools:")


@dataclass
class BrowserCheck:
    """What Chromium reported while loading the page."""

    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    screenshot: bytes = b""
    title: str = ""

    @property
    def errors(self) -> list[str]:
        return (
            [f"console: {m}" for m in self.console_errors]
            + [f"exception: {m}" for m in self.exceptions]
            + [f"log: {m}" for m in self.log_errors]
            + [f"external request: {u}" for u in self.external_requests]
        )


def _dup_high(fd: int) -> int:
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class _Cdp:
    """Minimal CDP client over the two pipes given to Chromium as fds 3 (in) and 4 (out)."""

    def __init__(self, chromium: str, args: list[str]):
        to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, from_child_w = os.pipe()
        # Move the child's ends above 9 so the shell's `3<&N 4>&M` never collides with them.
        to_child_r, from_child_w = (_dup_high(to_child_r), _dup_high(from_child_w))
        # The pipes must be fds 3 and 4 in Chromium: a shell redirects them, then execs it.
        cmd = (
            f"exec {shlex.quote(chromium)} {' '.join(shlex.quote(a) for a in args)} "
            f"3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-"
        )
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", cmd],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_loop, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _read_loop(self) -> None:
        buf = b""
        with os.fdopen(self._from_child_r, "rb", buffering=0) as f:
            while True:
                chunk = f.read(65536)
                if not chunk:
                    self._messages.put(None)
                    return
                buf += chunk
                while b"\0" in buf:
                    msg, buf = buf.split(b"\0", 1)
                    self._messages.put(json.loads(msg))

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line)

    def stderr_tail(self) -> str:
        return b"".join(self._stderr[-20:]).decode(errors="replace")

    def _get(self, deadline: float) -> dict | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("Chromium did not answer in time")
        msg = self._messages.get(timeout=remaining)
        if msg is None:
            raise RuntimeError(f"Chromium closed the DevTools pipe; stderr:\n{self.stderr_tail()}")
        return msg

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict:
        self._next_id += 1
        msg_id = self._next_id
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._get(deadline)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict:
        for ev in self.events:
            if ev.get("method") == method:
                return ev
        deadline = time.monotonic() + timeout
        while True:
            ev = self._get(deadline)
            self.events.append(ev)
            if ev.get("method") == method:
                return ev

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._get(deadline))
            except (TimeoutError, queue.Empty):
                return

    def close(self) -> None:
        try:
            os.write(
                self._to_child_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0"
            )
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            os.close(self._to_child_w)
        except OSError:
            pass


def _remote_object_text(obj: dict) -> str:
    if "value" in obj:
        return str(obj["value"])
    return str(obj.get("description", obj.get("type", "?")))


def check_html(
    html_path: str | os.PathLike,
    screenshot_path: str | os.PathLike | None = None,
    *,
    chromium: str = DEFAULT_CHROMIUM,
    width: int = 1200,
    height: int = 2000,
    timeout: float = 60.0,
    settle_seconds: float = 0.5,
) -> BrowserCheck:
    """Load ``html_path`` in headless Chromium and report errors plus a PNG screenshot.

    Raises FileNotFoundError when Chromium is missing (install: ``apt-get install -y chromium``).
    """
    if not Path(chromium).exists():
        raise NpeffFileNotFoundError(
            f"{chromium} not found; install it with `apt-get install -y chromium`"
        )
    url = Path(html_path).resolve().as_uri()
    result = BrowserCheck()
    with tempfile.TemporaryDirectory(prefix="npeff-chromium-") as profile:
        args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        cdp = _Cdp(chromium, args)
        try:
            target = cdp.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)[
                "targetId"
            ]
            session = cdp.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Page", "Network"):
                cdp.send(f"{domain}.enable", session=session)
            # Never reach the network: external URLs are blocked (and reported below).
            cdp.send(
                "Network.setBlockedURLs",
                {"urls": ["http://*", "https://*", "ws://*", "wss://*"]},
                session=session,
            )
            cdp.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            cdp.events.clear()
            cdp.send("Page.navigate", {"url": url}, session=session)
            cdp.wait_event("Page.loadEventFired", timeout=timeout)
            cdp.drain(settle_seconds)
            result.title = _remote_object_text(
                cdp.send("Runtime.evaluate", {"expression": "document.title"}, session=session)[
                    "result"
                ]
            )
            shot = cdp.send(
                "Page.captureScreenshot", {"format": "png"}, session=session, timeout=timeout
            )
            result.screenshot = base64.b64decode(shot["data"])
            cdp.drain(0.1)
        finally:
            cdp.close()
    for ev in cdp.events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.console_errors.append(
                " ".join(_remote_object_text(a) for a in params.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            det = params.get("exceptionDetails", {})
            exc = det.get("exception", {})
            result.exceptions.append(exc.get("description") or det.get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            result.log_errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            req_url = params.get("request", {}).get("url", "")
            if not req_url.startswith(_LOCAL_SCHEMES):
                result.external_requests.append(req_url)
    if screenshot_path is not None:
        Path(screenshot_path).write_bytes(result.screenshot)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(
            "usage: python -m npeff.report.browser_check REPORT.html [SCREENSHOT.png]",
            file=sys.stderr,
        )
        return 2
    res = check_html(argv[0], argv[1] if len(argv) > 1 else None)
    for e in res.errors:
        print(e)
    print(
        json.dumps(
            {
                "n_errors": len(res.errors),
                "screenshot_bytes": len(res.screenshot),
                "title": res.title,
            }
        )
    )
    return 1 if res.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
