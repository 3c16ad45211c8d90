"""Metrics a stage logs while it runs: the stream's one format, its writer and its reader.

A stage logs with `record.log(loss=0.1)`; a script that `run_external` launches (a torchrun training
script) logs with `orchestrator.metrics.log(loss=0.1)`, which finds the node's stream through the
environment variable `ORCH_METRICS_FILE` that run_external sets. Outside orch the variable is unset
and `log` does nothing, so the script runs unchanged anywhere.

The stream is one JSON line per call, appended with a single write (lines from the stage and from
the script it launched never interleave):

    {"t": 1733070000.12, "step": 3, "metrics": {"loss": 0.125, "lr": 0.001}}

`step` is null when the caller gave none: the reader numbers those values 0, 1, 2, ... per metric
(after the last explicit step of that metric), so the writer keeps no state and several processes
may write one stream. When the node succeeds, the stream is stored with its outputs and its entry
keeps a summary per metric (`summarize`), so a cached node still shows what the run that computed
it logged.

Training scripts import this module: it needs nothing beyond the standard library and orch's errors.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from .errors import OrchError

#: Where the metrics of the running node go (set by run_external for the scripts it launches).
ENV_VAR = "ORCH_METRICS_FILE"


class MetricsError(OrchError, TypeError):
    """A logged value is not a number, or a metric name is not a non-empty string."""


def log(step: int | None = None, *, all_ranks: bool = False, **scalars) -> None:
    """Log scalar metrics of the running node from a script orch launched; a no-op elsewhere.

    Under torchrun only rank 0 writes (every rank usually logs the same reduced value); pass
    all_ranks=True to keep every rank's lines."""
    path = os.environ.get(ENV_VAR)
    if not path or (not all_ranks and os.environ.get("RANK", "0") != "0"):
        return
    append(path, step, scalars)


def append(path: str, step: int | None, scalars: dict) -> None:
    """Append one line to the stream at `path` (created with its directory if missing)."""
    line = encode(step, scalars)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def encode(step: int | None, scalars: dict) -> bytes:
    """One stream line; numbers only (numpy and 0-d torch values are converted with float())."""
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        try:
            step = int(step) if float(step) == int(step) else step
        except (TypeError, ValueError, OverflowError):
            pass
        if isinstance(step, bool) or not isinstance(step, int):
            raise MetricsError(f"metrics step must be an integer, got {step!r}")
    if not scalars:
        raise MetricsError("log() needs at least one metric, e.g. log(loss=0.1)")
    values = {}
    for name, value in scalars.items():
        values[name] = number(name, value)
    return (json.dumps({"t": round(time.time(), 3), "step": step, "metrics": values}) + "\n").encode()


def number(name: str, value) -> float | int:
    """A metric's value as a JSON number (NaN and infinities are kept: a diverging loss is news)."""
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise MetricsError(f"metric {name!r}: expected a number, got {type(value).__name__} {value!r}")
    if isinstance(value, int):
        if not is_number(value):
            raise MetricsError(f"metric {name!r}: an int of {value.bit_length()} bits, beyond a float's range")
        return value
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise MetricsError(f"metric {name!r}: expected a number (or a 0-d array/tensor), got "
                           f"{type(value).__name__}: {e}") from None


# -- reading ----------------------------------------------------------------------------------------

def read_series(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a stream as [(step, value), ...] in logged order. A line that is not a
    stream line (a truncated last line of a killed run, garbage) is skipped, never fatal."""
    try:
        data = read_stream(path)
    except OSError:
        return {}
    return read_lines(data.splitlines()) if data is not None else {}


def read_stream(path: str | os.PathLike) -> bytes | None:
    """A stream's bytes, None when there is no stream (os.open: no file object's extra syscalls)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_lines(lines) -> dict[str, list[tuple[int, float]]]:
    """read_series of stream lines (bytes) already in memory."""
    series: dict[str, list[tuple[int, float]]] = {}
    for parsed in _parse_lines([raw for raw in lines if raw.strip()]):
        if parsed is None:
            continue
        step, values = parsed
        for name, value in values.items():
            points = series.setdefault(name, [])
            s = step if step is not None else (points[-1][0] + 1 if points else 0)
            points.append((s, value))
    return series


def last_values(path: str | os.PathLike, max_bytes: int = 8192) -> dict[str, float]:
    """The latest value of each metric in the stream's last lines (a live display polls this)."""
    return latest(path, max_bytes)[1]


def latest(path: str | os.PathLike, max_bytes: int = 8192) -> tuple[int | None, dict[str, float]]:
    """The last explicit step in the stream's last lines (None when they give none) and the latest
    value of each metric there: what the live display (runs.progress) shows of a running node,
    read from the tail only, so polling a long stream stays cheap."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read()
    except OSError:
        return None, {}
    step, values = None, {}
    for raw in tail.splitlines():
        parsed = _parse_line(raw)
        if parsed is not None:
            step = parsed[0] if parsed[0] is not None else step
            values.update(parsed[1])
    return step, values


def _parse_lines(lines: list[bytes]) -> list:
    """_parse_line of each line. The lines are parsed as one JSON array first (the JSON parser's C
    loop, several times faster than a call per line on a long stream); if that fails, or the array
    does not have one element per line, line by line, so a bad line costs only itself."""
    try:
        docs = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):  # (a damaged line nested past the parser's limit)
        return [_parse_line(raw) for raw in lines]
    if len(docs) != len(lines):
        return [_parse_line(raw) for raw in lines]
    return [_checked(d) for d in docs]


def _parse_line(raw: bytes) -> tuple[int | None, dict[str, float]] | None:
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return _checked(d)


def _checked(d) -> tuple[int | None, dict[str, float]] | None:
    if not isinstance(d, dict):
        return None
    step, values = d.get("step"), d.get("metrics")
    if (step is not None and (type(step) is not int)) or not isinstance(values, dict):
        return None
    good = {k: v for k, v in values.items() if isinstance(k, str) and is_number(v)}
    return step, good


def is_number(v: object) -> bool:
    """What a metric may be: store.entries.is_number, kept here too so that an external script
    logging metrics does not import the store."""
    return type(v) is float or type(v) is int and -sys.float_info.max <= v <= sys.float_info.max


def summarize(series: dict[str, list[tuple[int, float]]]) -> dict[str, dict]:
    """Per metric: the last value and its step, the min and max (NaN ignored) and their steps, and
    how many values were logged. What an entry keeps and `orch compare` shows."""
    out = {}
    for name, points in series.items():
        if not points:
            continue
        last_step, last = points[-1]
        finite = [(v, s) for s, v in points if not math.isnan(v)]
        lo = min(finite, key=lambda p: p[0]) if finite else (last, last_step)
        hi = max(finite, key=lambda p: p[0]) if finite else (last, last_step)
        out[name] = {"last": last, "step": last_step, "min": lo[0], "min_step": lo[1], "max": hi[0],
                     "max_step": hi[1], "n": len(points)}
    return out


def final_metrics(value) -> dict[str, float]:
    """The top-level numbers of a JSON output (an `evaluate` returning {"rel_l2": 0.025}): final
    metrics of the node. Nested objects and lists are not walked: a per-epoch history or the config
    a script echoes back is not a metric."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and is_number(v)}


def summary_of_value(value: float) -> dict:
    """The summary of a metric with one final value and no step (a JSON output's number)."""
    return {"last": value, "step": None, "min": value, "min_step": None, "max": value, "max_step": None, "n": 1}
