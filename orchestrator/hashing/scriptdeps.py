"""The project files an external script imports, transitively, found statically.

run_external traces the script it launches; a script usually imports its model or data code from
next to it (`from models import FNO2d`, `from external.models import ...`). Editing that code must
re-run the stage as surely as editing the script, so those files are traced too. Only files inside
the project count (never installed packages, the virtualenv or orch itself); imports that cannot be
resolved to a project file are ignored (they are installed packages or the standard library).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Sequence

from .astnodes import walk
from .coderoots import CodeRoots


def local_imports(script: str | os.PathLike, project_root: str | os.PathLike, exclude=(),
                  roots: CodeRoots | None = None, search: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Project .py files imported by `script` and, transitively, by them (the script excluded).
    Modules are looked for next to the script, in `project_root` and in `search` (the child's
    import path); project files are those under `roots` (default: `project_root` alone)."""
    root = Path(project_root).resolve()
    roots = roots if roots is not None else CodeRoots.single(root, exclude)
    start = Path(script).resolve()
    search_dirs = list(dict.fromkeys([start.parent, root, *(Path(s).resolve() for s in search)]))
    seen, found, todo = {start}, [], [start]
    while todo:
        path = todo.pop()
        for dep in _imports_of(path, search_dirs, root):
            dep = dep.resolve()
            if dep in seen or roots.root_of(str(dep)) is None:
                continue
            seen.add(dep)
            found.append(dep)
            todo.append(dep)
    return sorted(found)


def _imports_of(path: Path, search: list[Path], root: Path) -> list[Path]:
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    out: list[Path] = []
    for node in walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out += _module_files(alias.name.split("."), search)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importing file's package
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                parts = node.module.split(".") if node.module else []
                bases = [base]
            else:
                parts, bases = node.module.split(".") if node.module else [], search
            out += _module_files(parts, bases)
            for alias in node.names:  # `from pkg import submodule`
                out += _module_files(parts + [alias.name], bases)
    return out


def _module_files(parts: list[str], bases: list[Path]) -> list[Path]:
    """The files that importing `a.b.c` executes under the first base that has it: each package's
    __init__.py on the way and the module itself (`[]` parts: the base package's __init__.py)."""
    for base in bases:
        if not parts:
            if (base / "__init__.py").is_file():
                return [base / "__init__.py"]
            continue
        files, d = [], base
        for i, part in enumerate(parts):
            pkg, mod, last = d / part, d / f"{part}.py", i == len(parts) - 1
            if (pkg / "__init__.py").is_file():  # a regular package wins over a module
                files.append(pkg / "__init__.py")
                d = pkg
            elif mod.is_file() and last:
                files.append(mod)
            elif pkg.is_dir():  # a namespace package
                d = pkg
            else:
                files = []
                break
        if files:
            return files
    return []
