"""The live area of `orch run` on a terminal: a few lines below the run's output, redrawn in place.

Everything a run prints must stay above the area: the console's lines, a stage's print(), the output
of a command run_external streams, what pool workers print (other processes, writing to the file
descriptors they inherited), a native library's warnings. So for as long as the area is shown,
stdout and stderr (when it is the same terminal) are a pseudo-terminal: whoever writes to file
descriptor 1 or 2, in this process or a child, writes to it, and it still is a terminal to them
(line buffering, colours and progress bars unchanged). This module's thread copies what comes out
of it to the real terminal: it erases the area, writes the output, and draws the area again below
it. Output that ends mid-line (a prompt, a progress bar redrawn with \\r) keeps the area away until
its line is finished, so the two never share a line.

When the run loop is over, `close` puts the real terminal back on 1 and 2, and the thread erases
the area; it keeps copying whatever children still write into the pseudo-terminal until none holds
it any more (or this process exits). A failure of the area is said once and the output goes on,
copied as is.

Only imported when a live area is shown (termios, select: never for `orch --help` or a cached run).
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import select
import struct
import sys
import termios
import threading
import time
from typing import Callable

INTERVAL = 0.5  # seconds between two redraws (elapsed times, metrics)
FRESH = 0.1  # a redraw after output renders anew if the last rendering is older than this
ENDED_WAIT = 5.0  # close() waits this long at most for the area to be erased
DRAIN_WAIT = 2.0  # the thread waits this long at most for close()'s mark
#: What close() writes into the pseudo-terminal before it gives 1 and 2 back; never shown (and, were it
#: ever let through, an OSC sequence that terminals ignore).
MARK = b"\x1b]orch-progress-end\x07"


class LiveArea:
    def __init__(self, render: Callable[[int], list[str]], report: Callable[..., None], interval: float = INTERVAL):
        """`render(max_lines)`: the area's lines now; `report(error, write)`: say once that it failed."""
        self._render = render
        self._report = report
        self._interval = interval
        self._saved: dict[int, int] = {}  # 1 (and 2): a duplicate of the real terminal they were
        self._term = -1
        self._master = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._ending = False  # close() was called: erase the area, then copy output as is
        self._exiting = False  # the process exits: copy what is there, then stop
        self._ended = threading.Event()
        self._closed = False
        self._size: tuple[int, int] | None = None  # (columns, rows) of the real terminal, once known
        self._shown = 0  # lines of the area on the screen; the cursor is on the line below them
        self._term_dead = False
        self._failed = False
        self._marked = False  # close()'s mark was read
        self._carry = b""  # the end of a read that may be the beginning of the mark

    # -- main thread -------------------------------------------------------------------------------
    def open(self) -> None:
        """Route 1 (and 2, when it is the same terminal) into a new pseudo-terminal. No thread yet."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        both = _same_file(1, 2)
        master, slave = os.openpty()
        try:
            self._configure(slave, master)
            for fd in (1, 2) if both else (1,):
                self._saved[fd] = os.dup(fd)
                os.dup2(slave, fd)
        except BaseException:
            for fd, saved in self._saved.items():
                os.dup2(saved, fd)
                os.close(saved)
            self._saved.clear()
            os.close(master)
            raise
        finally:
            os.close(slave)  # 1 and 2 hold it now
        self._master, self._term = master, self._saved[1]
        self._wake_r, self._wake_w = os.pipe()
        atexit.register(self._at_exit)

    def _configure(self, slave: int, master: int) -> None:
        """The pseudo-terminal looks like the real one (size, modes), minus output processing: what
        programs write reaches the real terminal unchanged, and it does its own newline handling."""
        try:
            attrs = termios.tcgetattr(1)
            attrs[1] &= ~termios.OPOST
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
        except termios.error:
            pass
        self._follow_size(master, 1)

    def _follow_size(self, master: int, term: int) -> tuple[int, int]:
        """The real terminal's (columns, rows), also given to the pseudo-terminal when it changed."""
        try:
            size = os.get_terminal_size(term)
        except OSError:
            size = None
        if size is not None and (size.columns, size.lines) != self._size and size.columns > 0 and size.lines > 0:
            self._size = (size.columns, size.lines)
            try:
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size.lines, size.columns, 0, 0))
            except OSError:
                pass
        return self._size or (80, 24)  # a terminal that says 0 x 0 (a bare `script`) gets these

    def launch(self) -> None:
        if self._thread is None and self._master >= 0:
            self._thread = threading.Thread(target=self._run, name="orch-progress", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Put the real terminal back on 1 and 2 and wait until the area is erased (and what was
        written before is on the screen): what the caller prints next comes below it. Idempotent."""
        if self._closed or not self._saved:
            return
        self._closed = True
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        try:  # everything written before this is before the mark: the area goes once it has all gone out
            os.write(1, MARK)
        except OSError:
            self._marked = True
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            if saved != self._term:
                os.close(saved)
        self.launch()  # never launched (the first submit raised): what is in the pty still goes out
        self._ending = True
        self._wake()
        self._ended.wait(ENDED_WAIT)

    def _at_exit(self) -> None:
        self._exiting = True
        self._wake()
        if self._thread is not None:
            self._thread.join(1.0)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._live()
        except Exception as e:  # said once; output must keep flowing, as is
            self._failed = True
            self._write(_erase(self._shown))
            self._shown = 0
            self._report(e, self._say)
        self._ended.set()
        try:
            self._copy_as_is()
        except Exception as e:  # nobody reads the pseudo-terminal any more: its writers get EIO, never block
            self._report(e, self._say)
            if not self._master_closed():
                os.close(self._master)
                self._master = -1

    def _live(self) -> None:
        lines: list[str] = []
        line_open = False  # the output so far ends mid-line: no area until its line ends
        next_draw = rendered = 0.0
        while True:
            timeout = max(0.0, next_draw - time.monotonic()) if not self._failed else None
            readable = select.select([self._master, self._wake_r], [], [], timeout)[0]
            out = bytearray()
            if self._wake_r in readable:
                os.read(self._wake_r, 512)
            if self._master in readable:
                data = self._read_available()
                if data:
                    out += _erase(self._shown)
                    self._shown = 0
                    out += data
                    line_open = not data.endswith(b"\n")
            if self._ending or self._exiting or self._master_closed():  # closed: 1 and 2 are restored
                rest = self._drain_to_mark() if self._ending else self._read_available()
                out += _erase(self._shown) + rest  # shown: nothing was written below it
                self._shown = 0
                self._write(bytes(out))
                return
            now = time.monotonic()
            if not self._failed and not line_open and (now >= next_draw or not self._shown):
                if now >= next_draw or now - rendered >= FRESH:  # output (a node's line) often means news
                    lines, rendered = self._lines(), now
                    next_draw = now + self._interval
                if lines:
                    out += _erase(self._shown) + _draw(lines, self._encoding())
                    self._shown = len(lines)
            if out:
                self._write(bytes(out))

    def _lines(self) -> list[str]:
        columns, rows = self._follow_size(self._master, self._term)
        try:
            lines = self._render(max(2, rows // 3))
        except Exception as e:  # said once, the area goes away, the output goes on
            self._failed = True
            self._write(_erase(self._shown))
            self._shown = 0
            self._report(e, self._say)
            return []
        return [_fit(line, columns - 1) for line in lines]

    def _copy_as_is(self) -> None:
        """After close (or a failure): copy output unchanged until no child holds the pseudo-terminal
        any more, or this process exits."""
        while not self._master_closed():
            readable = select.select([self._master, self._wake_r], [], [], None)[0]
            if self._wake_r in readable:
                os.read(self._wake_r, 512)
            if self._master in readable:
                self._write(self._read_available())
            if self._exiting:
                self._write(self._read_available())
                return

    def _drain_to_mark(self) -> bytes:
        """Everything written before close(): a pseudo-terminal hands written bytes over to its reader
        a moment later, so "nothing to read now" does not mean "all read"; the mark does."""
        chunks = [self._read_available()]
        deadline = time.monotonic() + DRAIN_WAIT
        while not self._marked and not self._master_closed() and time.monotonic() < deadline:
            if select.select([self._master], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunks.append(self._read_available())
        return b"".join(chunks)

    def _read_available(self) -> bytes:
        """What the pseudo-terminal holds now (a few reads at most, so drawing is not starved),
        without close()'s mark (a beginning of it at the end waits for the next read)."""
        data = self._carry + self._read_chunks()
        self._carry = b""
        if MARK in data:
            self._marked = True
            data = data.replace(MARK, b"")
        for n in range(len(MARK) - 1, 0, -1):
            if data.endswith(MARK[:n]):
                if self._master_closed():
                    break
                data, self._carry = data[:-n], data[-n:]
                break
        return data

    def _read_chunks(self) -> bytes:
        chunks = []
        for _ in range(16):
            if self._master_closed() or not select.select([self._master], [], [], 0)[0]:
                break  # never blocks: the caller decides how long to wait
            try:
                data = os.read(self._master, 65536)
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EBADF):
                    raise
                data = b""
            if not data:  # EIO: nobody holds the other end any more
                os.close(self._master)
                self._master = -1
                break
            chunks.append(data)
        return b"".join(chunks)

    def _master_closed(self) -> bool:
        return self._master < 0

    def _write(self, data: bytes) -> None:
        """To the real terminal; if it is gone (closed, hung up), output is dropped, never blocked on."""
        view = memoryview(data)
        while view and not self._term_dead:
            try:
                n = os.write(self._term, view)
            except InterruptedError:
                continue
            except OSError:
                self._term_dead = True
                return
            view = view[n:]

    def _say(self, text: str) -> None:
        self._write(text.encode(self._encoding(), "replace"))

    @staticmethod
    def _encoding() -> str:
        return getattr(sys.stdout, "encoding", None) or "utf-8"


def _same_file(a: int, b: int) -> bool:
    try:
        return os.path.samestat(os.fstat(a), os.fstat(b))
    except OSError:
        return False


def _erase(lines: int) -> bytes:
    """From the line below the area: up to its first line, and clear to the end of the screen."""
    return b"\r\x1b[%dA\x1b[J" % lines if lines else b""


def _draw(lines: list[str], encoding: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode(encoding, "replace")


def _fit(line: str, width: int) -> str:
    """One screen line: control characters (a metric name with an escape code) shown as '?', cut to
    the width so that no line wraps (the erase counts lines)."""
    clean = "".join(c if c.isprintable() else "?" for c in line)
    return clean if len(clean) <= width else clean[:max(0, width - 1)] + "…"
