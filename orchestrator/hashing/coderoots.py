"""Code roots: which files are the user's project code, whose edits must re-run the stages using them.

Research code rarely lives only next to experiment.py: the team's library sits in `src/` of the same
repository, or in another checkout installed with `pip install -e`. So project code is, by root:
1. the repository that holds the experiment (its git root), or the experiment's directory when it
   is in no repository;
2. every package installed in editable/development mode (PEP 610/660: a dist-info whose
   direct_url.json says `"editable": true`; legacy `.egg-link` files), wherever it lives;
3. the extra `code-roots` of `[tool.orch]` in the nearest pyproject.toml (up to the repository root),
minus what `[tool.orch] exclude` lists, orch itself, the standard library, installed packages and
virtual environments (they change only with an install, which is not a code edit of the project).
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys

from ..errors import OrchError

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import NamedTuple

    from ..parsecache import ParsedTexts
else:
    from ..typeshim import NamedTuple

#: The keys `[tool.orch]` accepts (anything else is a mistake, reported with a suggestion).
TOOL_KEYS = ("code-roots", "exclude")


class ProjectConfigError(OrchError):
    """`[tool.orch]` in pyproject.toml is malformed (unknown key, wrong type, missing path)."""


class CodeRoot(NamedTuple):
    path: str  # real path of the root directory
    kind: str  # "repository", "experiment directory", "editable install of NAME", "pyproject code-roots"

    def describe(self, real_file: str) -> str:
        """`src/mylib/ops.py [repository /repo]`: a file as `orch why` names it."""
        return f"{os.path.relpath(real_file, self.path)} [{self.kind} {self.path}]"


class CodeRoots(NamedTuple):
    roots: tuple[CodeRoot, ...]
    excluded: tuple[str, ...] = ()

    @classmethod
    def single(cls, root: str | os.PathLike, exclude=()) -> CodeRoots:
        """One root (tests, and code that knows exactly where the project is)."""
        return cls((CodeRoot(os.path.realpath(root), "project"),), tuple(os.path.realpath(e) for e in exclude))

    def root_of(self, real_path: str) -> CodeRoot | None:
        """The root a (real) path belongs to, or None when it is not project code. The innermost
        root wins, so an editable package inside the repository is named as itself."""
        if _under(real_path, self.excluded) or _is_installed(real_path):
            return None
        best = None
        for root in self.roots:
            if _under(real_path, (root.path,)) and (best is None or len(root.path) > len(best.path)):
                best = root
        return best

    def describe(self, filename: str) -> str:
        real = os.path.realpath(filename)
        root = self.root_of(real)
        return root.describe(real) if root is not None else real

    def to_json(self) -> dict:
        return {"roots": [[r.path, r.kind] for r in self.roots], "excluded": list(self.excluded)}

    @classmethod
    def from_json(cls, d: dict) -> CodeRoots:
        return cls(tuple(CodeRoot(p, k) for p, k in d["roots"]), tuple(d["excluded"]))


def discover(experiment_dir: str | os.PathLike, orch_package: str | os.PathLike, toml: ParsedTexts | None = None
             ) -> CodeRoots:
    """The code roots of an experiment (see the module docstring); reads at most a few small files.
    `toml`: where a pyproject.toml parsed before is found (parsecache; a run's cache has one)."""
    start = os.path.realpath(experiment_dir)
    repo = _git_root(start)
    roots = [CodeRoot(repo, "repository") if repo else CodeRoot(start, "experiment directory")]
    excluded = [os.path.realpath(orch_package)]
    config = _nearest_pyproject(start, repo or start)
    if config is not None:
        extra, exclude = _tool_orch(config, toml)
        roots += [CodeRoot(p, "pyproject code-roots") for p in extra]
        excluded += exclude
    roots += [CodeRoot(path, f"editable install of {name}") for name, path in editable_installs()]
    return CodeRoots(tuple(dict.fromkeys(roots)), tuple(dict.fromkeys(excluded)))


def _git_root(start: str) -> str | None:
    """The nearest directory holding `.git` (a directory, or a file in worktrees and submodules)."""
    d = start
    while True:
        if os.path.exists(os.path.join(d, ".git")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _nearest_pyproject(start: str, top: str) -> str | None:
    d = start
    while True:
        candidate = os.path.join(d, "pyproject.toml")
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(d)
        if d == top or parent == d:
            return None
        d = parent


def _tool_orch(path: str, toml: ParsedTexts | None = None) -> tuple[list[str], list[str]]:
    """(extra code roots, exclusions) from `[tool.orch]`, as real paths; relative ones start at
    the pyproject.toml's directory."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ProjectConfigError(f"{path}: cannot read it: {e}") from e
    parse = functools.partial(_orch_section, path=path)
    section = parse(text) if toml is None else toml.load(text, parse)
    if not isinstance(section, dict):
        raise ProjectConfigError(f"{path}: [tool.orch] must be a table")
    for key in section:
        if key not in TOOL_KEYS:
            import difflib

            close = difflib.get_close_matches(key, TOOL_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ProjectConfigError(f"{path}: unknown key {key!r} in [tool.orch]; {hint}known keys: {', '.join(TOOL_KEYS)}")
    base = os.path.dirname(path)
    lists = []
    for key in TOOL_KEYS:
        value = section.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ProjectConfigError(f"{path}: [tool.orch] {key} must be a list of paths, e.g. {key} = [\"src\"]")
        lists.append([os.path.realpath(os.path.join(base, v)) for v in value])
    missing = [p for p in lists[0] if not os.path.isdir(p)]
    if missing:
        raise ProjectConfigError(f"{path}: [tool.orch] code-roots lists {missing[0]}, which is not a directory; "
                                 f"fix the path (relative paths start at {base})")
    return lists[0], lists[1]


def _orch_section(text: str, path: str):
    """The `[tool.orch]` value of a pyproject.toml's text, {} when it has none (what the
    parse cache keeps: nothing else of the file matters here)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, installed as tomli (pyproject.toml)
        import tomli as tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProjectConfigError(f"{path}: invalid TOML: {e}; fix the syntax") from e
    tool = data.get("tool", {})
    if not isinstance(tool, dict):
        raise ProjectConfigError(f"{path}: [tool] must be a table")
    return tool.get("orch", {})


def editable_installs() -> list[tuple[str, str]]:
    """(distribution name, project directory) of every package installed in editable/development
    mode on sys.path: one directory listing per sys.path entry, an access() check per distribution
    (most have no direct_url.json: no exception raised and caught for each, ~2.5 us less apiece)
    and a small read per one installed from a URL or a directory."""
    found = []
    stdlib = os.path.dirname(os.__file__)
    for entry in sys.path:
        if entry == stdlib or entry == f"{stdlib}/lib-dynload":  # hundreds of names, never a distribution's
            continue
        try:
            listing = os.scandir(entry or ".")
        except OSError:
            continue
        with listing:
            for e in listing:
                if e.name.endswith(".dist-info"):
                    url_file = f"{e.path}/direct_url.json"
                    if not os.access(url_file, os.F_OK):
                        continue
                    project = _editable_dist(url_file)
                elif e.name.endswith(".egg-link"):
                    project = _egg_link(e.path)
                else:
                    continue
                if project is not None:
                    found.append((e.name.split("-", 1)[0].split(".egg-link")[0], project))
    return found


def _editable_dist(url_file: str) -> str | None:
    """The project directory a dist-info's direct_url.json (PEP 610) names, if it says editable."""
    try:
        with open(url_file, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("dir_info"), dict) and data["dir_info"].get("editable")):
        return None
    path = file_url_path(str(data.get("url", "")))
    return os.path.realpath(path) if path else None


_C0_OR_SPACE = "".join(map(chr, range(0x21)))  # what urlsplit strips from the left (WHATWG)
_PERCENT_RUNS = re.compile(r"(?:%[0-9A-Fa-f]{2})+")  # escapes decoded together: one UTF-8 sequence spans several


def file_url_path(url: str) -> str:
    """urllib.parse.unquote(urlparse(url).path) of a file: URL, "" for any other URL: PEP 610's
    direct_url.json of an editable install. Not urllib.parse itself: with ipaddress it costs a
    run ~1.5 ms, and every run reads these (tests/test_key_trust.py checks the two agree)."""
    url = url.lstrip(_C0_OR_SPACE)
    for c in "\t\r\n":
        url = url.replace(c, "")
    scheme, colon, rest = url.partition(":")
    if not colon or scheme.lower() != "file":
        return ""
    rest = rest.split("#", 1)[0].split("?", 1)[0]
    if rest.startswith("//"):  # an authority (localhost, or a host name this machine is not: ignored)
        slash = rest.find("/", 2)
        rest = rest[slash:] if slash >= 0 else ""
    if "%" not in rest:
        return rest
    return _PERCENT_RUNS.sub(lambda m: bytes.fromhex(m.group().replace("%", "")).decode("utf-8", "replace"), rest)


def _egg_link(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return os.path.realpath(first) if first and os.path.isdir(first) else None


def _under(path: str, dirs) -> bool:
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in dirs)


def _is_installed(real: str) -> bool:
    """The standard library, site-packages and the active virtual environment: never project code."""
    return _under(real, _installed_code_dirs()) or bool({"site-packages", "dist-packages"}.intersection(real.split(os.sep)))


@functools.lru_cache(maxsize=None)
def _installed_code_dirs() -> tuple[str, ...]:
    """The standard library (where `os` lives; lib-dynload is inside it) and the active virtual
    environment. Installed packages are recognized by their site-packages/dist-packages directory.
    (Not sysconfig: computing its paths costs a few ms on every run.)"""
    dirs = {os.path.realpath(os.path.dirname(os.__file__))}
    if sys.prefix != sys.base_prefix:  # a virtualenv, even one inside the project
        dirs.add(os.path.realpath(sys.prefix))
    return tuple(sorted(dirs))
