"""The DAG of one experiment: nodes (a stage on a parameter set) and their input edges.

Nodes are appended while `run(record)` wires stages, and an input always resolves to a node that
already exists, so the node list *is* a topological order: no cycle can be built, and every pass
over the graph is a loop over a list (10,000-node DAGs never recurse).
"""

from __future__ import annotations

from ..errors import PlanningError
from ..params import ParamSet, set_key
from ..record import Record
from ..stage import Stage

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    from ..typeshim import NamedTuple

AGGREGATE_SET = "aggregate"


class Edge(NamedTuple):
    """An input of a node: immutable, and made 10,000 times by a 10,000-node experiment (a
    NamedTuple is made in a fifth of the time of a frozen dataclass)."""

    input: str  # the consumer's input name
    producer: int  # node id
    output: str  # the producer's output name
    lazy: bool
    set_name: str | None = None  # for aggregate inputs: which parameter set this value belongs to


class Node:
    """A stage on a parameter set. Written out rather than a dataclass: defining a dataclass costs
    2-3.5 M instructions at import (its methods are generated and compiled), on every run."""

    __slots__ = ("id", "stage", "set_name", "inputs", "consumers")

    def __init__(self, id: int, stage: Stage, set_name: str, inputs: list[Edge], consumers: list[int] | None = None):
        self.id, self.stage, self.set_name, self.inputs = id, stage, set_name, inputs
        self.consumers = [] if consumers is None else consumers

    @property
    def label(self) -> str:
        return f"{self.stage.name}[{self.set_name}]"


class Graph:
    def __init__(self, param_sets: list[ParamSet]):
        self.nodes: list[Node] = []
        self.param_sets: dict[str, ParamSet] = {p.name: p for p in param_sets}
        self._aggregate_record: Record | None = None
        self._aggregate_params: dict | None = None
        self._checked: set[Stage] = set()  # stages add_stage has checked (importable, a plain stage)

    def new_record(self, pset: ParamSet) -> Record:
        rec = Record(pset.values, pset.name)
        rec._graph = self
        return rec

    def params_of(self, node: Node) -> dict:
        """The parameters a node's reads resolve against; an aggregate reads every set, under
        `<set_key(name)>.<path>` (see Record.param_sets)."""
        if node.stage.kind == "aggregate":
            if self._aggregate_params is None:
                self._aggregate_params = {set_key(n): p.values for n, p in self.param_sets.items()}
            return self._aggregate_params
        pset = self.param_sets.get(node.set_name)
        return pset.values if pset is not None else {}

    def add_stage(self, stage: Stage, record: Record) -> Record:
        """One node of `stage` on `record`'s parameter set (called once per stage and set: a
        10,000-node experiment calls it 10,000 times, so what depends on the stage alone is checked once)."""
        if stage not in self._checked:
            _check_importable(stage)
            if stage.kind != "stage":
                raise PlanningError(f"{stage.name} is an @aggregate; call it from aggregate(records), not on one record")
            self._checked.add(stage)
        nodes = self.nodes
        node_id = len(nodes)
        producers = record._producers
        edges = []
        for spec in stage.inputs:
            found = producers.get(spec.name)
            if found is None:
                self._edge(stage, record, spec.name, spec.lazy, None)  # raises, naming what is there
            edges.append(Edge(spec.name, found[0], found[1], spec.lazy, None))
        for e in edges:  # (once every input resolved: a PlanningError leaves the graph as it was)
            nodes[e.producer].consumers.append(node_id)
        nodes.append(Node(node_id, stage, record.name, edges))
        for out in stage.outputs:
            producers[out.name] = (node_id, out.name)
        return record

    def add_aggregate(self, stage: Stage, records: list[Record]) -> Record:
        _check_importable(stage)
        edges = []
        for spec in stage.inputs:
            for rec in records:
                edges.append(self._edge(stage, rec, spec.name, spec.lazy, rec.name))
        agg = self.aggregate_record()
        self._append(Node(len(self.nodes), stage, AGGREGATE_SET, edges), agg)
        return agg

    def aggregate_record(self) -> Record:
        if self._aggregate_record is None:
            self._aggregate_record = Record({}, AGGREGATE_SET)
            self._aggregate_record._graph = self
        return self._aggregate_record

    def _append(self, node: Node, record: Record) -> None:
        self.nodes.append(node)
        for e in node.inputs:
            self.nodes[e.producer].consumers.append(node.id)
        for out in node.stage.outputs:
            record._producers[out.name] = (node.id, out.name)

    def _edge(self, stage: Stage, record: Record, name: str, lazy: bool, set_name: str | None) -> Edge:
        found = record._producers.get(name)
        if found is None:
            import difflib

            known = sorted(record._producers)
            hint = difflib.get_close_matches(name, known, n=1)
            raise PlanningError(
                f"stage {stage.name} ({stage.fn.__code__.co_filename}) needs input {name!r} in parameter set "
                f"{record.name!r}, but no stage called before it on that record produces it"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
                + (f" (artifacts available: {', '.join(known)})" if known else " (no stage was called before it)")
            )
        producer, output = found
        return Edge(name, producer, output, lazy, set_name)

    def downstream(self, roots: set[int]) -> set[int]:
        """Node ids reachable from `roots` (inclusive), in one forward pass over the topological order."""
        hit = set(roots)
        for node in self.nodes:
            if node.id not in hit and any(e.producer in hit for e in node.inputs):
                hit.add(node.id)
        return hit


def _check_importable(stage: Stage) -> None:
    """Workers re-import stages by module and name, so they must be module-level functions."""
    fn = stage.fn
    if fn.__module__ in ("__main__", None) or "<" in fn.__qualname__:
        raise PlanningError(
            f"stage {fn.__qualname__} in {fn.__code__.co_filename} is not a module-level function of an importable "
            f"module (lambdas, nested functions and notebook cells cannot be re-imported by workers); "
            f"move it into a module such as stages/{fn.__name__}.py"
        )
