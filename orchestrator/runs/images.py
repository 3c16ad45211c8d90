"""Images that stages produced, found for the run report: stored outputs that are image files
(a plot returned through FileReferenceCacher) and image files inside stored directory outputs
(the example's `predict` writes predictions.png into its output directory).

The manifest row of a node names the store paths of such outputs (`output_paths`, see
runs.manifest.IMAGE_EXTS). The report embeds images as base64 data URIs, so it stays one file; SVG
goes into an <img> too, where a browser runs none of its scripts and loads nothing it references.
What is embedded is bounded: MAX_IMAGES images, MAX_BYTES each and TOTAL_BYTES in all; the others
are listed with their size and path instead, and a directory is searched through at most
MAX_ENTRIES entries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .manifest import IMAGE_EXTS

MAX_IMAGES = 24
MAX_BYTES = 2_000_000  # one image
TOTAL_BYTES = 8_000_000  # all embedded images (their base64 text is a third larger)
MAX_ENTRIES = 2_000  # directory entries looked at per directory output
PER_OUTPUT = 8  # images taken from one directory output

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".gif": "image/gif", ".webp": "image/webp"}


@dataclass
class Image:
    node: dict  # the manifest row of the node that produced it
    output: str  # the output's name
    name: str  # the file's path inside the output ("" for an output that is the image itself)
    path: str  # where it is stored
    size: int
    data_uri: str = ""  # set when embedded
    problem: str = ""  # why it is not embedded (too large, over the budget, unreadable, not an image)

    @property
    def label(self) -> str:
        return f"{self.output}/{self.name}" if self.name else self.output


@dataclass
class Found:
    images: list[Image]  # in manifest order; embedded ones have data_uri
    more: int  # image outputs past MAX_IMAGES, not listed
    unsearched: int  # directory outputs past MAX_IMAGES, not looked into
    problems: list[str]  # directories that could not be read


def collect(nodes: list[dict]) -> Found:
    """The images of `nodes` (manifest rows), embedded up to the limits; the same stored file (a
    computation shared by several parameter sets) once."""
    images: list[Image] = []
    problems: list[str] = []
    seen: set[str] = set()  # image files taken
    outputs: set[str] = set()  # stored outputs looked at (a shared computation's, once)
    more = unsearched = 0
    for n in nodes:
        paths = n.get("output_paths")
        if not paths:
            continue
        for output, path in paths.items():
            if not isinstance(path, str) or path in outputs:
                continue
            outputs.add(path)
            if len(images) >= MAX_IMAGES:  # count the rest without touching the disk
                if os.path.splitext(path)[1].lower() in IMAGE_EXTS:
                    more += 1
                else:
                    unsearched += 1
                continue
            for name, file, size in _files(path, problems):
                if file in seen:
                    continue
                seen.add(file)
                if len(images) >= MAX_IMAGES:
                    more += 1
                    continue
                images.append(Image(n, output, name, file, size))
    budget = TOTAL_BYTES
    for img in images:
        if img.size > MAX_BYTES:
            img.problem = f"{_mb(img.size)}, larger than the {_mb(MAX_BYTES)} an image may take in the report"
        elif img.size > budget:
            img.problem = f"{_mb(img.size)}: the report's {_mb(TOTAL_BYTES)} for images are used up"
        else:
            img.data_uri, img.problem = _embed(img.path)
            if img.data_uri:
                budget -= img.size
    return Found(images, more, unsearched, problems)


def _files(path: str, problems: list[str]):
    """(name inside the output, file, size) of the images of one stored output."""
    try:
        if not os.path.isdir(path):
            if os.path.splitext(path)[1].lower() in IMAGE_EXTS:
                yield "", path, os.path.getsize(path)
            return
        taken, looked = 0, 0
        for top, dirs, files in os.walk(path, onerror=lambda e: problems.append(f"{e.filename}: {e.strerror}")):
            dirs.sort()
            for f in sorted(files):
                looked += 1
                if looked > MAX_ENTRIES or taken >= PER_OUTPUT:
                    return
                if os.path.splitext(f)[1].lower() in MIME:
                    file = os.path.join(top, f)
                    taken += 1
                    yield os.path.relpath(file, path).replace(os.sep, "/"), file, os.path.getsize(file)
    except OSError as e:  # a stored object removed by `orch cache gc` since, or unreadable
        problems.append(f"{path}: {e.strerror or e}")


def _embed(path: str) -> tuple[str, str]:
    """(data URI, "") or ("", why not)."""
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        return "", f"cannot be read: {e.strerror or e}"
    if not _looks_like(ext, data):
        return "", f"not a {ext[1:].upper()} image"
    import base64

    return f"data:{MIME[ext]};base64,{base64.b64encode(data).decode('ascii')}", ""


def _looks_like(ext: str, data: bytes) -> bool:
    """The file's first bytes are those of its format (a browser shows a broken image otherwise)."""
    if ext == ".png":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if ext in (".jpg", ".jpeg"):
        return data.startswith(b"\xff\xd8\xff")
    if ext == ".gif":
        return data[:6] in (b"GIF87a", b"GIF89a")
    if ext == ".webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return b"<svg" in data[:4096]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB"
