"""Code fingerprints: what a stage's code is, as a digest that changes with every change of what
it computes and with nothing else (formatting, comments, docstrings).

The digest covers the normalized AST of the stage function plus, transitively, every function,
class and module-level name of the user's project it uses. Per-definition digests are cached per
source file stamp in the cache directory, so a cached run parses no source.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types

from ..fsutil import LazyLogger, load_cache_file, save_cache_file
from . import sha
from .coderoots import CodeRoots
from .statcache import is_racy
from .values import VALUE_PREFIX, encode, hash_value

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    import ast
    import weakref
    from typing import Any, NamedTuple, Sequence
else:
    from ..typeshim import NamedTuple

log = LazyLogger(__name__)

#: Module-level data larger than this (encoded) is keyed by its source only, never by value.
MAX_CONST_BYTES = 64 * 1024
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")
_MISSING = object()
_SOURCE, _SCOPES = "__source__", "__scopes__"  # extra keys of a parsed file's index
# ast.dump differs between Python versions: the persisted per-definition cache is valid for one.
_FP_CACHE_VERSION = f"fingerprint-v2-py{sys.version_info[0]}.{sys.version_info[1]}"


# ast (and copy) are imported where source is parsed or walked: a cached run does neither.
def _defs() -> tuple:
    import ast

    return ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef


def _stamp_of(st: os.stat_result) -> list:
    """What a cached digest of a source file is valid for: size, mtime, and inode and ctime too (a
    digest must never outlive an edit that restored the mtime)."""
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


class _Stale(Exception):
    """A source file changed between its stamp and its parse: nothing is recorded under that stamp."""


class _Global(NamedTuple):
    """A module-level name that is not a def, fingerprinted by the statements that bind it."""

    module: types.ModuleType
    name: str


class Fingerprinter:
    """Code fingerprints: the normalized AST of a function or class plus, transitively, of every
    function, class and module-level name it uses that is defined in the user's project.

    Formatting, comments and docstrings never change a fingerprint; any code change does. Create
    one per run: a file is parsed at most once per stamp, and with `cache_path` each definition's
    digest and names persist (call save()), so a re-run of unchanged code parses nothing."""

    def __init__(self, roots: CodeRoots | str | os.PathLike, exclude: Sequence[str | os.PathLike] = (),
                 cache_path: str | os.PathLike | None = None):
        self.roots = roots if isinstance(roots, CodeRoots) else CodeRoots.single(roots, exclude)
        self.cache_path = cache_path
        self._started_ns = time.time_ns()
        self._files: dict[str, dict] | None = None  # filename -> {"stamp": [...], "defs": {key: info}}
        self._dirty = False
        self._trees: dict[str, tuple] = {}  # filename -> (stamp, index, tree)
        self._in_project: dict[str, bool] = {}
        self._analysed: dict[int, tuple] = {}  # id(obj) -> (obj, items, refs)
        self._digests: dict[int, tuple] = {}  # id(obj) -> (obj, digest)
        self._globals: dict[tuple[str, str], _Global] = {}
        self._stamps: dict[str, list | None] = {}  # source file -> its stamp when first read (_stamp)
        self._closures: dict[int, set] = {}  # id(obj) -> the items of its fingerprint
        self._item_files: dict[str, str] = {}  # item name -> the file it is defined in
        self._static: dict[str, list] = {}  # module not loaded -> [(module, digest, file)] of its closure
        self._warned: set[str] = set()
        self._described: dict[str, str] = {}  # file -> "path [root kind root]"

    def fingerprint(self, obj: Any) -> str:
        """Digest of obj (unwrapped) and its transitive project references, sorted by name."""
        if isinstance(obj, (types.MethodType, staticmethod, classmethod)):
            obj = obj.__func__
        obj = _unwrap_chain(obj)[-1]
        if not isinstance(obj, (types.FunctionType, type)):
            raise TypeError(f"cannot fingerprint {obj!r}: not a function or a class")
        if (done := self._digests.get(id(obj))) is not None:
            return done[1]
        items, seen, todo = set(), {id(obj)}, [obj]
        while todo:  # a worklist, not recursion: helper graphs may be deep or cyclic
            own_items, refs = self._analyse(todo.pop())
            items.update(own_items)
            for ref in refs:
                if id(ref) not in seen:
                    seen.add(id(ref))
                    todo.append(ref)
        digest = hash_value(("fingerprint-v1", _name(obj), sorted(items, key=lambda i: (i[1], i))))
        self._digests[id(obj)] = (obj, digest)
        self._closures[id(obj)] = items
        return digest

    def code_items(self, obj: Any) -> dict[str, list[str]]:
        """What a fingerprint is made of, to say what changed between two of them: item name
        ("module:qualname") -> [its digest, the file it lives in, described by code root]."""
        self.fingerprint(obj)
        obj = _unwrap_chain(obj.__func__ if isinstance(obj, (types.MethodType, staticmethod, classmethod)) else obj)[-1]
        out = {}
        for kind, name, digest in self._closures[id(obj)]:
            where = self._item_files.get(name)
            if where and where not in self._described:
                self._described[where] = self.roots.describe(where)
            out[name] = [digest[:16], self._described.get(where, "")]
        return out

    def save(self) -> None:
        """Persist the per-definition cache, merged with the file on disk; files changed just now
        (racy stamps) and files that no longer exist are left out."""
        if self.cache_path is not None and self._dirty:
            files = {**self._read(), **self._load()}
            files = {f: r for f, r in files.items()
                     if os.path.exists(f) and not is_racy(max(r["stamp"][1], r["stamp"][3]))}
            self._dirty = not save_cache_file(self.cache_path, {"version": _FP_CACHE_VERSION, "files": files})

    def is_project_file(self, filename: str) -> bool:
        """Under a code root (hashing.coderoots), not excluded, not the stdlib / installed packages / a venv."""
        known = self._in_project.get(filename)
        if known is None:
            known = os.path.isfile(filename) and self._is_project_location(os.path.realpath(filename))
            self._in_project[filename] = known
        return known

    def _is_project_location(self, real: str) -> bool:
        return self.roots.root_of(real) is not None

    def _is_project_obj(self, obj) -> bool:
        if isinstance(obj, types.FunctionType):
            return self.is_project_file(obj.__code__.co_filename)
        filename = isinstance(obj, type) and getattr(sys.modules.get(obj.__module__), "__file__", None)
        return bool(filename) and self.is_project_file(filename)

    def _is_project_module(self, mod: types.ModuleType) -> bool:
        if filename := getattr(mod, "__file__", None):
            return self.is_project_file(filename)
        return any(self._is_project_location(os.path.realpath(p)) for p in getattr(mod, "__path__", ()))

    # -- one object: its own items and its direct references, memoized per object

    def _analyse(self, obj) -> tuple[list, list]:
        if (done := self._analysed.get(id(obj))) is not None:
            return done[1], done[2]
        refs, closure, kind, is_fn = [], {}, "code", isinstance(obj, types.FunctionType)
        if isinstance(obj, _Global):
            module, kind, name = obj.module, "global", f"{obj.module.__name__}:{obj.name}"
            key, locate = f"v:{obj.name}", _binding_locator(obj.name)
        elif isinstance(obj, type):
            module, name = sys.modules.get(obj.__module__), _name(obj)
            key, locate = f"c:{obj.__qualname__}:{getattr(obj, '__firstlineno__', '')}", _class_locator(obj)
        else:
            module, name, code, closure = _module_of(obj), _name(obj), obj.__code__, _closure_vars(obj)
            key, locate = f"f:{code.co_name}:{code.co_firstlineno}", _function_locator(code)
        filename = obj.__code__.co_filename if is_fn else getattr(module, "__file__", None)
        info = self._definition(filename, key, locate) if filename else None
        if info is not None:
            digest, chains = info
        elif isinstance(obj, _Global):  # bound by no statement we can see: its value stands in
            value = getattr(module, obj.name, None)
            digest, chains = _constant_digest(value) or hash_value(("opaque", type(value).__qualname__)), []
        elif isinstance(obj, type):  # no locatable source: its members stand in
            digest, chains = _class_fallback(obj, refs), []
        else:  # lambda, exec'd or <stdin> code: hash the code object; co_names hold attributes too
            names = _all_names(obj.__code__)
            digest = hash_value(_code_struct(obj.__code__, obj))
            chains = [(n,) for n in names] + [(a, b) for a in names for b in names]
        items = [(kind, name, digest)]
        if filename:
            self._item_files[name] = filename
        namespace = obj.__globals__ if is_fn else getattr(module, "__dict__", {})
        for chain in chains:
            self._resolve(tuple(chain), closure, namespace, module, items, refs)
        if isinstance(obj, type):
            refs.extend(b for b in obj.__bases__ if self._is_project_obj(b))
        self._analysed[id(obj)] = (obj, items, refs)
        return items, refs

    def _resolve(self, chain: tuple, closure: dict, namespace: dict, module, items: list, refs: list) -> None:
        """Follow a name (and attributes through project modules) to what it ends at: a project
        def is followed; a project module-level name is followed to the statements binding it and,
        when it holds plain data, also hashed by value (data read from a file at import time changes
        without its source line changing). An import of a project module that is not loaded yet
        (a function-level import) is keyed by the content of its files."""
        head, owner, imported = chain[0], None, None
        if head.startswith("import:"):  # `from <module> import name` / a function-level import
            imported = _absolute(head[7:], getattr(module, "__package__", None))
            value = sys.modules.get(imported, _MISSING)
        elif head in closure:
            value = closure[head]
        else:
            value, owner = namespace.get(head, _MISSING), module
        i = 0
        while i + 1 < len(chain) and isinstance(value, types.ModuleType) and self._is_project_module(value):
            owner, value, i = value, getattr(value, chain[i + 1], _MISSING), i + 1
        if value is _MISSING and imported:
            self._static_import(imported, chain[1:2], items)
            return
        if value is _MISSING or isinstance(value, types.ModuleType):
            return
        if defs := [c for c in _unwrap_chain(value) if self._is_project_obj(c)]:
            refs.extend(defs)
            return
        if isinstance(value, (types.FunctionType, type)):
            return  # defined in an installed package or the stdlib
        project_global = owner is not None and self._is_project_module(owner)
        label = f"{owner.__name__ if owner is not None else namespace.get('__name__', '?')}:{chain[i]}"
        digest = _import_time_digest(owner, chain[i], value) if project_global else _constant_digest(value)
        if digest is not None:
            items.append(("const", label, digest))
            if owner is not None and getattr(owner, "__file__", None):
                self._item_files[label] = owner.__file__
        elif project_global and _plain_data(value):
            self._warn_large(label, owner, value)
        if project_global:
            refs.append(self._globals.setdefault((owner.__name__, chain[i]), _Global(owner, chain[i])))

    def _static_import(self, module: str, names: tuple, items: list) -> None:
        """`module` (and `module.name`, when name is a submodule) is not loaded: key the project
        files importing it would execute, and those of the project modules they import, by their
        normalized source (one item per module, so a change is reported with its file)."""
        for target in (module, *(f"{module}.{n}" for n in names)):
            closure = self._static.get(target)
            if closure is None:
                closure = self._static[target] = self._static_closure(target)
            for mod_name, digest, filename in closure:
                items.append(("module", mod_name, digest))
                self._item_files[mod_name] = filename

    def _static_closure(self, module: str) -> list[tuple[str, str, str]]:
        from .modules import find_module_files

        found, seen, todo = [], set(), [module]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for mod_name, filename in find_module_files(name) or ():
                if mod_name in seen and mod_name != name or not self.is_project_file(filename):
                    continue
                info = self._definition(filename, "m:", _module_locator, _module_summary(mod_name, filename))
                if info is not None:
                    found.append((mod_name, info[0], filename))
                    todo.extend(info[1])
        return sorted(set(found))

    def _warn_large(self, label: str, owner, value) -> None:
        if label in self._warned:
            return
        self._warned.add(label)
        where = getattr(owner, "__file__", None) or owner.__name__
        log.warning("%s: module-level %s holds more data than orch keys by value (%s, over %d KB encoded); "
                    "stages using it re-run only when its source changes. If it is read from a file, call "
                    "record.track(path) in those stages.", where, label.split(":", 1)[1], type(value).__name__,
                    MAX_CONST_BYTES // 1024)

    def function_node(self, fn) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        """The parsed definition of a plain function (docstrings stripped), from the per-file parse
        this instance keeps: other static analyses (lock scopes) need not re-read the source."""
        code = getattr(_unwrap_chain(fn)[-1], "__code__", None)
        stamp = code and self._stamp(code.co_filename)
        if not stamp:
            return None  # gone, or edited since import: the source is not the code that runs
        try:
            parsed = self._parse(code.co_filename, stamp)
        except _Stale:
            return None
        nodes = parsed and _function_locator(code)(*parsed)
        return nodes[0] if nodes else None

    # -- definitions: [AST digest, reference chains], cached per file stamp

    def _definition(self, filename: str, key: str, locate, summarize=None) -> list | None:
        """[digest, names] of one definition (or, with `summarize`, whatever it makes of the located
        nodes), cached per file stamp."""
        stamp = self._stamp(filename)
        if stamp is None:
            return None
        files = self._load()
        record = files.get(filename)
        if record is None or record["stamp"] != stamp:
            record = files[filename] = {"stamp": stamp, "defs": {}}
        if key not in record["defs"]:
            try:
                parsed = self._parse(filename, stamp)
            except _Stale:
                return None
            nodes = parsed and locate(*parsed)
            summary = (summarize or _definition_summary)(nodes, parsed[0]) if nodes else None
            record["defs"][key] = summary
            self._dirty = True
        return record["defs"][key]

    def _stamp(self, filename: str) -> list | None:
        """The stamp (_stamp_of) of a source file, taken once per instance: every definition in it is
        read against one stamp (a file of 200 stages is one stat, not 200). None if it cannot be
        stat'ed or changed since the run imported it."""
        if filename in self._stamps:
            return self._stamps[filename]
        try:
            st = os.stat(filename)
        except OSError:
            self._stamps[filename] = None
            return None
        if st.st_ctime_ns > self._started_ns:  # the source on disk may not be the imported code
            self._edited(filename)
            return None
        stamp = self._stamps[filename] = _stamp_of(st)
        return stamp

    def _edited(self, filename: str) -> None:
        """`filename` changed since the run imported it: its definitions from now on are hashed as
        imported (said once: the file's stamp is None from now on)."""
        self._stamps[filename] = None
        log.warning("%s changed during this run: fingerprinting its code as imported", filename)

    def _load(self) -> dict[str, dict]:
        if self._files is None:
            self._files = self._read()
        return self._files

    def _read(self) -> dict[str, dict]:
        found = load_cache_file(self.cache_path, _FP_CACHE_VERSION, "files")
        return {f: r for f, r in found.items() if isinstance(r, dict) and isinstance(r.get("defs"), dict)
                and isinstance(r.get("stamp"), list) and len(r["stamp"]) == 4}

    def _parse(self, filename: str, stamp: list) -> tuple[dict, ast.Module] | None:
        """The tree with docstrings stripped and its (name, line) -> def index, once per stamp."""
        import ast

        cached = self._trees.get(filename)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        try:
            with open(filename, "rb") as f:
                source = f.read()
                st = os.fstat(f.fileno())  # after the read: an edit landing during it shows too
        except OSError:
            return None
        if _stamp_of(st) != stamp:  # edited since its stamp
            self._edited(filename)
            raise _Stale
        try:
            tree = ast.parse(source, filename)
        except (SyntaxError, ValueError):
            return None
        index, todo, defs = {_SOURCE: source}, [tree], _defs()
        while todo:  # statements only: definitions never hide inside expressions
            node = todo.pop()
            if isinstance(node, (*defs, ast.Module)) and node.body and _is_docstring(node.body[0]):
                node.body = node.body[1:] or [ast.Pass()]
            if isinstance(node, defs):
                for line in (node.lineno, *(d.lineno for d in node.decorator_list)):
                    index[(node.name, line)] = node
            for field in _BODIES:
                todo.extend(getattr(node, field, None) or ())
        self._trees[filename] = (stamp, index, tree)
        return index, tree


def _definition_summary(nodes: list, index: dict) -> list:
    return [sha.new(_dump(nodes).encode()).hexdigest(), sorted(_reference_chains(nodes, _scopes(index)))]


def _scopes(index: dict) -> dict | None:
    """(name, line) -> symtable of every function and class of a parsed file, built once per file:
    Python's own scoping rules, to tell a local variable from a reference to the module."""
    if _SCOPES not in index:
        import symtable

        try:
            top = symtable.symtable(importlib.util.decode_source(index[_SOURCE]), "<orch>", "exec")
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
            index[_SCOPES] = None
        else:
            tables, todo = {}, [top]
            while todo:
                table = todo.pop()
                tables.setdefault((table.get_name(), table.get_lineno()), table)
                todo.extend(table.get_children())
            index[_SCOPES] = tables
    return index[_SCOPES]


def _module_locator(index: dict, tree: ast.Module):
    return [tree]


def _module_summary(module: str, filename: str):
    """A whole module file: its normalized AST and the modules it imports (absolute names)."""
    is_package = os.path.basename(filename) == "__init__.py"

    def summarize(nodes: list, index: dict) -> list:
        from .modules import imported_modules

        return [sha.new(_dump(nodes).encode()).hexdigest(), sorted(imported_modules(nodes[0], module, is_package))]
    return summarize


def _function_locator(code: types.CodeType):
    """co_firstlineno is the first decorator's line (or the def line): unique with the name."""
    def locate(index: dict, tree: ast.Module):
        import ast

        node = index.get((code.co_name, code.co_firstlineno))
        return [node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    return locate


def _class_locator(cls: type):
    """Classes carry no line before Python 3.13: walk the qualname through def/class bodies."""
    def locate(index: dict, tree: ast.Module):
        import ast

        nodes: list = [tree]
        for part in (p for p in cls.__qualname__.split(".") if p != "<locals>"):
            nodes = [d for d in _defs_in(nodes[-1].body) if d.name == part]
            if not nodes:
                return None
        first = getattr(cls, "__firstlineno__", None)  # 3.13+: disambiguates redefinitions
        matches = [n for n in nodes if isinstance(n, ast.ClassDef)]
        exact = [n for n in matches if first in (n.lineno, *(d.lineno for d in n.decorator_list))]
        return (exact or matches)[-1:] or None
    return locate


def _binding_locator(name: str):
    """The module-level statements (whole if/try blocks) that bind a global name."""
    def binds(node: ast.AST) -> bool:
        import ast

        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return any((a.asname or a.name.split(".")[0]) == name for a in node.names)
        return isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id == name

    def locate(index: dict, tree: ast.Module):
        import ast

        return [s for s in tree.body if not isinstance(s, _defs()) and any(map(binds, ast.walk(s)))] or None
    return locate


def _defs_in(body: list):
    """Definitions directly in a body, looking inside if/try/with/for/match but not nested defs."""
    defs = _defs()
    for stmt in body:
        if isinstance(stmt, defs):
            yield stmt
        else:
            for field in _BODIES:
                yield from _defs_in(getattr(stmt, field, None) or [])


def _is_docstring(stmt: ast.stmt) -> bool:
    import ast

    value = stmt.value if isinstance(stmt, ast.Expr) else None
    return isinstance(value, ast.Constant) and isinstance(value.value, str)


def _is_orch_decorator(expr: ast.expr) -> bool:
    """@stage / @x.stage / @stage(...) / aggregate: orch hashes the declaration separately."""
    import ast

    if isinstance(expr, ast.Call):
        expr = expr.func
    name = expr.id if isinstance(expr, ast.Name) else expr.attr if isinstance(expr, ast.Attribute) else ""
    return name.endswith(("stage", "aggregate"))


def _dump(nodes: list) -> str:
    """Fields only, no positions, so formatting never counts; orch's own decorators dropped."""
    import ast
    import copy

    out, defs = [], _defs()
    for node in nodes:
        if isinstance(node, defs):
            node = copy.copy(node)  # shallow: only the top node's decorator list changes
            node.decorator_list = [d for d in node.decorator_list if not _is_orch_decorator(d)]
        out.append(ast.dump(node, annotate_fields=False, include_attributes=False))
    return "\n".join(out)


def _without_resources(node):
    """A definition without the `resources=` of its orch decorator: a name used there (a module-level
    GPU count) says where a stage runs, not what it computes, and is no dependency of its code."""
    import ast
    import copy

    if not isinstance(node, _defs()) or not any(isinstance(d, ast.Call) and _is_orch_decorator(d)
                                              and any(k.arg == "resources" for k in d.keywords)
                                              for d in node.decorator_list):
        return node
    node = copy.copy(node)
    decorators = []
    for d in node.decorator_list:
        if isinstance(d, ast.Call) and _is_orch_decorator(d):
            d = copy.copy(d)
            d.keywords = [k for k in d.keywords if k.arg != "resources"]
        decorators.append(d)
    node.decorator_list = decorators
    return node


def _reference_chains(nodes: list, scopes: dict | None = None) -> set[tuple[str, ...]]:
    """Every loaded name, dotted chain (a.b.c) and import in the nodes, decorators included. Names
    bound by an `import` inside a definition (`import a.b as c` in a function body) become chains
    of that import ("import:a.b", ...), since they are not in the module's namespace; parameters and
    local variables are dropped (`scopes`, see _local_names): `def train(record, model)` next to a
    stage called `model` does not depend on it."""
    import ast

    from .astnodes import walk

    chains, local_imports, locals_only, defs = set(), {}, set(), _defs()
    for node in map(_without_resources, nodes):
        in_def = isinstance(node, defs)
        if in_def:
            locals_only |= _local_names(node, scopes)
        for sub in walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load):
                chains.add((sub.id,))
            elif isinstance(sub, ast.Attribute):
                parts, base = [sub.attr], sub.value
                while isinstance(base, ast.Attribute):
                    parts.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name):
                    chains.add((base.id, *reversed(parts)))
            elif isinstance(sub, ast.ImportFrom):
                chains.update((f"import:{'.' * sub.level}{sub.module or ''}", a.name) for a in sub.names)
            elif in_def and isinstance(sub, ast.Import):
                for a in sub.names:
                    top = a.name.split(".")[0]
                    local_imports[a.asname or top] = a.name if a.asname else top
                    chains.add((f"import:{a.name}",))
    if local_imports:
        chains = {(f"import:{local_imports[c[0]]}", *c[1:]) if c[0] in local_imports else c for c in chains}
    return {c for c in chains if c[0] not in locals_only}


def _local_names(node, scopes: dict | None) -> set[str]:
    """Names that are only ever local (parameters, assignments, imports) in the scopes of a function
    or class definition and the scopes nested in it, by symtable; names its decorators, defaults and
    annotations use are evaluated outside it and never count. Empty when the scopes are unknown."""
    import ast

    from .astnodes import walk

    table = scopes.get((node.name, node.lineno)) if scopes else None
    if table is None:
        return set()
    glob, local, todo = set(), set(), [table]
    while todo:
        t = todo.pop()
        for sym in t.get_symbols():
            if sym.is_global():
                glob.add(sym.get_name())
            elif sym.is_local() or sym.is_parameter():
                local.add(sym.get_name())
        todo.extend(t.get_children())
    outside = [*node.decorator_list, *getattr(node, "bases", ()), *getattr(node, "keywords", ())]
    if not isinstance(node, ast.ClassDef):
        outside += [*node.args.defaults, *filter(None, node.args.kw_defaults), node.returns,
                    *(a.annotation for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                                             node.args.vararg, node.args.kwarg) if a is not None)]
    used_outside = {n.id for expr in outside if expr is not None for n in walk(expr) if isinstance(n, ast.Name)}
    return local - glob - used_outside


def _absolute(module: str, package: str | None) -> str:
    try:
        return importlib.util.resolve_name(module, package) if module.startswith(".") else module
    except (ImportError, ValueError):
        return ""


def _module_of(fn: types.FunctionType) -> types.ModuleType | None:
    """The module whose namespace fn's globals are (none for exec'd code)."""
    module = sys.modules.get(fn.__globals__.get("__name__"))
    return module if module is not None and module.__dict__ is fn.__globals__ else None


def _under(path: str, dirs: Sequence[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in dirs)


def _name(obj) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _unwrap_chain(obj) -> list:
    """obj and everything behind its __wrapped__ links (stage objects, functools.wraps)."""
    chain = [obj]
    while len(chain) < 100:
        try:  # proxies may raise anything from __getattr__
            inner = getattr(chain[-1], "__wrapped__", None)
        except Exception:
            inner = None
        if inner is None or any(inner is seen for seen in chain):
            break
        chain.append(inner)
    return chain


def _closure_vars(fn: types.FunctionType) -> dict:
    out = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    return out


def _frozen(value) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(map(_frozen, value))
    return isinstance(value, (type(None), bool, int, float, str, bytes))


#: module -> {name: (the object bound to it, its digest when this process first fingerprinted it)}.
#: A module-level value is keyed as the module set it up at import (a CLI run fingerprints right
#: after importing): an accumulator that stages fill while they run in this process (a notebook,
#: repeated in-process runs) must not turn into a code change. A name bound to another object (a
#: reloaded module, a rebinding) is hashed again; a new process sees new values anyway.
#: (Made by the first use: a project whose stages use no such value does not import weakref, 2.5 M instructions.)
_IMPORT_TIME_VALUES: weakref.WeakKeyDictionary | None = None


def _import_time_digest(module: types.ModuleType, name: str, value) -> str | None:
    global _IMPORT_TIME_VALUES
    if _IMPORT_TIME_VALUES is None:
        import weakref

        _IMPORT_TIME_VALUES = weakref.WeakKeyDictionary()
    seen = _IMPORT_TIME_VALUES.setdefault(module, {})
    known = seen.get(name)
    if known is None or known[0] is not value:
        known = seen[name] = (value, _constant_digest(value))
    return known[1]


def _plain_data(value) -> bool:
    """Containers of plain data (what _constant_digest keys when small enough)."""
    try:
        encode(value) if not isinstance(value, (tuple, list, dict, set, frozenset)) else None
    except TypeError:
        return False
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(_plain_data(v) for v in list(value)[:1000])
    if isinstance(value, dict):
        return all(_plain_data(k) and _plain_data(v) for k, v in list(value.items())[:1000])
    return True


def _constant_digest(value) -> str | None:
    """hash_value of small plain data; None for anything else or anything large."""
    if isinstance(value, (tuple, list, dict, set, frozenset)) and len(value) > MAX_CONST_BYTES:
        return None
    try:
        data = encode(value)
    except TypeError:
        return None
    return sha.new(VALUE_PREFIX + data).hexdigest() if len(data) <= MAX_CONST_BYTES else None


def _code_struct(code: types.CodeType, fn=None) -> list:
    """What defines a code object's behaviour (Python-version specific), as plain data."""
    def const(c):
        if isinstance(c, types.CodeType):
            return ("code", _code_struct(c))
        if isinstance(c, tuple):
            return ("tuple", [const(x) for x in c])
        if isinstance(c, frozenset):
            return ("frozenset", sorted(map(repr, c)))
        return c if _constant_digest(c) is not None else ("repr", repr(c))  # complex, Ellipsis
    out = ["code-v1", code.co_code, [const(c) for c in code.co_consts], list(code.co_names),
           list(code.co_varnames), list(code.co_freevars), code.co_argcount, code.co_posonlyargcount,
           code.co_kwonlyargcount, code.co_flags]
    if fn is not None:
        out += [const(fn.__defaults__ or ()), repr(sorted((fn.__kwdefaults__ or {}).items()))]
    return out


def _all_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names) | set(code.co_freevars)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _all_names(c)
    return names


def _class_fallback(cls: type, refs: list) -> str:
    """A class without locatable source: hash its members' names and values, follow its methods."""
    members = []
    for key, value in sorted(vars(cls).items()):
        value = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if isinstance(value, property):
            refs.extend(f for f in (value.fget, value.fset, value.fdel) if f is not None)
            members.append((key, "property"))
        elif isinstance(value, types.FunctionType):
            refs.append(value)
            members.append((key, "function"))
        elif not (key.startswith("__") and key.endswith("__")):
            members.append((key, _constant_digest(value) or type(value).__qualname__))
    return hash_value(("class-nosrc-v1", members))
