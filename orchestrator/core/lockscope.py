"""What a node's lock covers: which concurrent computations are the same one.

A computation is identified by its key *and* the trace of the parameters it reads, and the trace is
only known once it ran. Locking the key alone would serialize every parameter set of a sweep whose
stage has the same key (same code, same inputs, different parameters) -- exactly the case that
`--parallel` and MPI exist for. Locking key + every parameter would let two sets that differ only
in parameters the stage never reads compute the same thing twice.

So the lock is named by the key plus the values of the parameters the stage function *visibly*
reads: `record.params.a.b` chains, `p = record.params.a` aliases, `["k"]` and `.get("k")`. All
runtime reads come from those chains, so equal values on them imply equal traces: one lock per
computation, computed once. Different values usually mean different traces, which then run at
the same time. When the record or its parameters escape (passed to a helper, iterated, dynamic
keys) or a chain ends at a sub-mapping, the scope is the key alone: still correct, less parallel.
Known limit: a chain only reached in a branch that is not taken can give two sets with the same
trace different scopes; they may then compute concurrently, each still storing a correct entry.
"""

from __future__ import annotations

import ast
import inspect

from ..hashing.astnodes import walk
from ..params import is_ignored, resolve, traced_value
from .keys import lock_scope_name, read_value_hash  # the very hash an entry's trace records for a read

# Mapping methods of TrackedParams: an attribute with one of these names is a method, not a key.
_METHODS = frozenset({"get", "keys", "values", "items", "to_dict"})
_OPAQUE = None


def lock_scope(stage, params: dict, key: str, read_hash=None, function_node=None, memo: dict | None = None) -> str:
    """The name a node's lock is taken under (see the module docstring). `read_hash(path)` may give
    the hash a read of `path` records (the planner memoizes them); computed here otherwise.
    `function_node(fn)` may give fn's parsed definition (the fingerprinter has parsed it already);
    `memo` keeps each stage's visible reads for the run (see visible_reads)."""
    paths = visible_reads(stage.fn, function_node, memo)
    if paths is None:
        return key
    items = []
    for path in paths:
        if is_ignored(path, stage.ignore):
            continue
        if isinstance(resolve(params, path), dict):  # a sub-mapping: what of it is read is not visible
            return key
        items.append((path, read_hash(path) if read_hash is not None else read_value_hash(traced_value(params, path, stage.ignore))))
    return lock_scope_name(key, items)


def visible_reads(fn, function_node=None, memo: dict | None = None) -> tuple[str, ...] | None:
    """Dotted parameter paths read through `record.params` in fn's source; None when not all reads
    are visible there. `memo` is keyed by code object (a code edit is a new code object)."""
    code = getattr(fn, "__code__", None)
    if memo is not None and code in memo:
        return memo[code]
    try:
        result = _analyze(fn, function_node)
    except (OSError, TypeError, SyntaxError, IndentationError):  # no source (REPL, C function...)
        result = _OPAQUE
    if memo is not None:
        memo[code] = result
    return result


def _analyze(fn, function_node=None) -> tuple[str, ...] | None:
    func = function_node(fn) if function_node is not None else None
    if func is None:
        import textwrap

        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        func = tree.body[0] if tree.body else None
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return _OPAQUE
    args = func.args.posonlyargs + func.args.args
    if not args:
        return _OPAQUE
    record = args[0].arg
    parents: dict[ast.AST, ast.AST] = {}
    bound: dict[str, int] = {}  # how often each name is bound anywhere in the function
    names: set[ast.Name] = set()  # every name read
    for node in walk(func, parents):  # one pass over the tree
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                names.add(node)
            else:
                bound[node.id] = bound.get(node.id, 0) + 1
        elif isinstance(node, ast.arg):
            bound[node.arg] = bound.get(node.arg, 0) + 1
    if bound.get(record, 0) != 1:  # the record parameter is rebound somewhere
        return _OPAQUE
    paths: set[str] = set()
    aliases: dict[str, tuple[str, ...]] = {}  # name -> parameter path prefix it stands for
    work = [(record, None)]
    while work:
        name, prefix = work.pop()
        for use in [n for n in names if n.id == name]:
            if prefix is None:  # the record itself: only attribute access that is not .params is fine
                parent = parents.get(use)
                if not isinstance(parent, ast.Attribute) or parent.value is not use:
                    return _OPAQUE  # passed along, aliased, compared...: reads may happen anywhere
                if parent.attr != "params":
                    continue
                found = _chain(parent, (), parents)
            else:
                found = _chain(use, prefix, parents)
            if found is _OPAQUE:
                return _OPAQUE
            kind, path = found
            if kind == "alias":
                target = path[0]
                if bound.get(target, 0) != 1 or target in aliases or target == record:
                    return _OPAQUE
                aliases[target] = path[1]
                work.append((target, path[1]))
            elif not path:
                return _OPAQUE  # bare record.params used as a value
            else:
                paths.add(".".join(path))
    return tuple(sorted(paths))


def _chain(node: ast.AST, prefix: tuple[str, ...], parents: dict):
    """Follow `.a["b"].get("c")` upward from `node` (a params view for `prefix`). Returns
    ("read", path), ("alias", (name, path)) or None when the use is not statically readable."""
    path = prefix
    while True:
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            if parent.attr in _METHODS or parent.attr.startswith("_"):
                call = parents.get(parent)
                if (parent.attr == "get" and isinstance(call, ast.Call) and call.func is parent
                        and call.args and isinstance(call.args[0], ast.Constant)
                        and isinstance(call.args[0].value, str) and call.args[0].value):
                    return ("read", path + tuple(call.args[0].value.split(".")))
                return _OPAQUE
            path = path + (parent.attr,)
            node = parent
        elif isinstance(parent, ast.Subscript) and parent.value is node:
            key = parent.slice
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and key.value):
                return _OPAQUE
            path = path + tuple(key.value.split("."))
            node = parent
        elif (isinstance(parent, ast.Assign) and parent.value is node and len(parent.targets) == 1
              and isinstance(parent.targets[0], ast.Name)):
            return ("alias", (parent.targets[0].id, path))
        elif isinstance(parent, ast.Call) and parent.func is node:
            return _OPAQUE  # calling something read from params
        else:
            return ("read", path)
