"""Modules found without importing them: the files `import a.b` would execute, and the modules a
file imports. For code that is imported only when a stage runs (`def stage(record): from mylib
import f`, common to keep start-up fast) and is not loaded while orch plans: it cannot be followed
object by object, so its files are keyed by content instead (conservative: any edit of them counts).
"""

from __future__ import annotations

import ast
import importlib.util
import sys

from .astnodes import walk


def find_module_files(name: str) -> list[tuple[str, str]] | None:
    """(module name, source file) of what importing module `name` executes (each package's
    __init__.py on the way and the module itself), found by asking the import system's finders
    without executing anything; None when it cannot be found (a typo, or a name that is not a
    module, e.g. `b` in `from a import b` when b is a function)."""
    parts = name.split(".")
    files: list[tuple[str, str]] = []
    search = None  # where the next part is looked for: sys.path at the top, then a package's __path__
    for i in range(len(parts)):
        fullname = ".".join(parts[: i + 1])
        spec = _spec(fullname, search)
        if spec is None:
            return None
        if spec.origin and spec.has_location and spec.origin.endswith(".py"):
            files.append((fullname, spec.origin))
        search = list(spec.submodule_search_locations or [])
        if i < len(parts) - 1 and not search:
            return None  # `a.b` where a is a module, not a package
    return files


def _spec(fullname: str, search):
    loaded = sys.modules.get(fullname)
    if loaded is not None and getattr(loaded, "__spec__", None) is not None:
        return loaded.__spec__
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec(fullname, search)
        except (ImportError, ValueError, AttributeError, TypeError):
            continue
        if spec is not None:
            return spec
    return None


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules a file imports anywhere in it (function bodies included):
    `import a.b` gives a.b, `from a import b` gives a and a.b (b may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            try:
                absolute = importlib.util.resolve_name(base, package) if node.level else base
            except (ImportError, ValueError):
                continue
            if absolute:
                names.add(absolute)
                names.update(f"{absolute}.{alias.name}" for alias in node.names if alias.name != "*")
    return names
