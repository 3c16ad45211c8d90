"""Headless Chromium driven through the DevTools protocol, with a websocket client from the standard
library (no pip package, nothing downloaded): open a page, collect what the browser reports on its
console (console messages, uncaught exceptions, failed loads, security and rendering errors) and
evaluate expressions in the loaded page.

Only tests use it. It evaluates JavaScript in the page through the protocol, so the page under test
itself stays free of scripts.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse


class Chromium:
    """One headless Chromium with a remote-debugging port, stopped on exit (its process group only)."""

    def __init__(self, tmp_path: Path, window: tuple[int, int] = (1400, 1000), timeout: float = 60):
        self.window = window
        self.timeout = timeout
        self.log = tmp_path / "chromium-stderr.txt"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={tmp_path / 'profile-cdp'}",
                 f"--window-size={window[0]},{window[1]}", "--force-device-scale-factor=1", "about:blank"],
                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "HOME": str(tmp_path)}, start_new_session=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        """Stop the browser and its helper processes: the process group it leads (start_new_session)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=20)
                return
            except subprocess.TimeoutExpired:
                continue

    def port(self) -> int:
        """The port Chromium announces on stderr ("DevTools listening on ws://127.0.0.1:PORT/...")."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("DevTools listening on "):
                    return urlparse(line.split()[-1]).port
            if self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode} before listening:\n{text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"chromium did not announce its DevTools port within {self.timeout}s")

    def page(self) -> Page:
        """The DevTools session of its first page (about:blank)."""
        port = self.port()
        deadline = time.monotonic() + self.timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if targets:
                return Page(targets[0]["webSocketDebuggerUrl"], self.timeout)
            if time.monotonic() > deadline:
                raise AssertionError("chromium has no page target")
            time.sleep(0.05)


class Page:
    """A DevTools session on one page: commands, and the events seen meanwhile."""

    def __init__(self, ws_url: str, timeout: float):
        self.timeout = timeout
        self.events: list[dict] = []
        self._next = 0
        self._ws = _WebSocket(ws_url, timeout)

    def call(self, method: str, **params) -> dict:
        self._next += 1
        self._ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == self._next:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise AssertionError(f"no answer to {method} within {self.timeout}s")

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for e in self.events:
            if e.get("method") == method:
                return e
        while time.monotonic() < deadline:
            msg = json.loads(self._ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise AssertionError(f"no {method} within {self.timeout}s")

    def open(self, url: str, width: int, height: int) -> None:
        """Listen to the console, then load `url` in a `width` x `height` viewport and wait for its load event."""
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def console(self) -> list[tuple[str, str]]:
        """(level, text) of everything the page reported on its console so far: console API calls,
        uncaught exceptions, and the browser's own entries (failed loads, security, rendering)."""
        out = []
        for e in self.events:
            method, p = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                out.append(({"warning": "warning", "error": "error", "assert": "error"}.get(p.get("type"), p.get("type")), text))
            elif method == "Runtime.exceptionThrown":
                out.append(("error", json.dumps(p.get("exceptionDetails", {}))[:500]))
            elif method == "Log.entryAdded":
                entry = p.get("entry", {})
                out.append((entry.get("level", "?"), f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}"))
        return out

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])


class _WebSocket:
    """A minimal RFC 6455 client: text frames out (masked), text/continuation frames in, ping answered."""

    def __init__(self, url: str, timeout: float):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"websocket handshake with {url} closed: {head!r}")
            head += chunk
        status, _, self._buf = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise AssertionError(f"websocket handshake refused: {status!r}")

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
                                if n < 1 << 16 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        message = b""
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
            if opcode == 0x9:  # ping: pong with the same payload
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            if opcode == 0x8:
                raise AssertionError("the browser closed the DevTools connection")
            message += payload
            if b0 & 0x80:
                return message.decode()

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise AssertionError("the DevTools connection closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out
