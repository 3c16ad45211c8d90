"""The run loop: decides *when* each node runs.

It walks the plan event by event (no recursion): a node becomes ready when all its producers are
done; ready nodes whose decision is not a cache hit are re-decided with their inputs' real content
(early cutoff) and submitted to the executor. Inputs are loaded on demand and an in-memory value
is dropped once its last consumer is done. A failure skips only what depends on it; everything
else still runs. The executor is injected: the loop never knows where a node runs.
"""

from __future__ import annotations

import heapq
import os
from collections import deque

from ..store import Entry, Read, StoredOutput
from . import keys
from .graph import Graph, Node
from .plan import ABSENT, Decision, PlanContext, decide, lookup, signature_hints
from .status import Status

# Hot loops compare states per node: plain module constants (enum member lookup costs ~0.2 µs each).
CACHED, RUN, PENDING, RAN, FAILED, SKIPPED, DAMAGED = (Status.CACHED, Status.RUN, Status.PENDING, Status.RAN,
                                                      Status.FAILED, Status.SKIPPED, Status.DAMAGED)

_NONE_ABSENT: dict[int, str] = {}  # read only: a node none of whose producers is lost

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Callable

    from ..executors.base import Executor
    from ..executors.task import Task, TaskResult


class NodeOutcome:
    """What became of one node in this run (or, for a dry run, what would). A plain class, not a
    dataclass: defining one costs 2-3 M instructions at import, on every run. Slots: a run makes one per
    node, and an instance dict is one more object to make, fill and free for each."""

    __slots__ = ("node", "status", "key", "reason", "duration", "entry", "outputs", "reads", "files", "error",
                 "error_type", "traceback", "skipped_because", "log_path", "metrics", "series", "index_sig")

    def __init__(self, node: Node, status: Status = PENDING, key: str | None = None, reason: str = "",
                 entry: Entry | None = None):
        self.node = node
        self.status = status
        self.key = key
        self.reason = reason
        self.duration = 0.0
        self.entry = entry  # the entry used (cached) or written (ran)
        self.outputs: dict[str, StoredOutput] = {}  # stored outputs, entry or not
        self.reads: dict[str, Read] = {}
        self.files: dict[str, str] = {}
        self.error = ""
        self.error_type = ""
        self.traceback = ""
        self.skipped_because = ""
        self.log_path: str | None = None  # a failure written to the node's log (the console points to it)
        self.metrics: dict[str, dict] | None = None  # its metrics summary (orchestrator.metrics), this run's or the entry's
        self.series: str | None = None  # the metrics stream it was summarized from (a JSONL file), if any
        self.index_sig: tuple | None = None  # the stat signature of the entry it wrote, for the entry index

    def take(self, entry: Entry | None, outputs: dict[str, StoredOutput], reads: dict[str, Read]) -> None:
        self.entry, self.outputs, self.reads = entry, outputs, reads
        if entry is not None:
            files = entry.files
            self.files = dict(files) if files else {}  # a copy (an empty one without calling dict)
            self.metrics = entry.metrics
        else:
            self.files = {}


#: a consumer with more input edges than this has them tallied once (Runner._edges_into) rather than
#: scanned for each of its producers
_FEW_INPUTS = 8


class _State:
    def __init__(self, remaining: list[int], hashes: list):
        self.remaining = remaining  # per node: producers not finished yet
        # (producer, output) -> input edges of consumers still to run, counted when the producer
        # keeps that output in memory (only then does anyone need the count): a run that keeps
        # nothing in memory, as a cached one, counts nothing
        self.refs: dict[tuple[int, str], int] = {}
        self.values: dict[tuple[int, str], object] = {}  # in-memory outputs
        # per node: its outputs' content hashes; a cached node's Entry until a consumer asks (_output_hashes)
        self.hashes: list[dict | Entry | None] = hashes
        self.rerun_waiters: dict[int, list[int]] = {}


class Runner:
    def __init__(self, graph: Graph, ctx: PlanContext, decisions: list[Decision], executor: Executor,
                 on_done: Callable[[NodeOutcome], None] = lambda o: None, run_dir: Path | None = None,
                 on_start: Callable[[Node, Task], None] = lambda node, task: None):
        """`run_dir`: where the nodes' logs (logs/) and metrics streams (metrics/) go; `on_start`
        hears each node as it is handed to the executor, `on_done` each outcome as it is final."""
        self.graph = graph
        self.ctx = ctx
        self.decisions = list(decisions)
        self.executor = executor
        self.on_done = on_done
        self.on_start = on_start
        self.run_dir = run_dir
        self._run_dir = str(run_dir) if run_dir is not None else None  # joined by hand per node: no Path
        self.outcomes = [NodeOutcome(n) for n in graph.nodes]
        self._in_flight: set[int] = set()  # node ids submitted and not completed
        self._rerun_after_damage: set[int] = set()
        self._retried: set[tuple[int, int]] = set()  # (consumer, producer) retried after the producer's re-run
        self._absent: dict[int, dict[int, str]] = {}  # partial aggregate -> {lost producer: why}
        # Parallel executors: a node whose computation (lock scope) is already in flight waits here
        # for it instead of blocking a worker on the node lock; it is then re-decided (a hit).
        self._parked: dict[str, list[int]] = {}
        self._scope_of: dict[int, str] = {}
        self._ran: dict[str, set[str]] = {}  # key -> trace ids stored by this run: --overwrite redoes each once
        self._edge_counts: dict[int, dict[tuple[int, str], int]] = {}  # _edges_into, per consumer

    def run_all(self) -> list[NodeOutcome]:
        """Run every node to an outcome; returns them in node order."""
        nodes = self.graph.nodes
        remaining = [len({e.producer for e in n.inputs}) if len(n.inputs) > 1 else len(n.inputs) for n in nodes]
        st = _State(remaining=remaining, hashes=[None] * len(nodes))
        self._st = st
        ready = deque(n.id for n in nodes if st.remaining[n.id] == 0)
        while ready or self._in_flight:
            capacity = self.executor.capacity  # once per round, not per node: a cached run is one round
            while ready and len(self._in_flight) < capacity:
                self._dispatch(nodes[ready.popleft()], ready)
            if self._in_flight:
                for result in self.executor.wait():
                    self._in_flight.discard(result.node_id)
                    self._complete(result, ready)
        return self.outcomes

    def _submit(self, node: Node, d: Decision) -> None:
        self._in_flight.add(node.id)
        task = self._task(node, d)
        self.on_start(node, task)
        self.executor.submit(task, node.stage)

    # -- dispatch ------------------------------------------------------------------------------
    def _dispatch(self, node: Node, ready: deque) -> None:
        """Resolve a ready node: a hit finishes at once; otherwise submit it."""
        d = self.decisions[node.id]
        if d.state != CACHED:
            d = self._decide_again(node, d)
            if d is None:  # parked behind the same computation, in flight
                return
        out = self.outcomes[node.id]
        out.key, out.reason = d.key, d.reason
        if d.state == CACHED:
            entry = d.entry
            out.status, out.duration = CACHED, 0.0
            out.take(entry, entry.outputs, entry.reads)
            if entry.series is not None:
                out.series = str(self.ctx.store.object_path(entry.series, verify=False))
            self._finish(node, entry, ready)  # its hashes: made if a consumer that is not a hit asks
            return
        self._submit(node, d)

    def _decide_again(self, node: Node, d: Decision) -> Decision | None:
        """The decision of a ready node that was not a hit when planned, with its inputs' content known
        now (early cutoff); None when the same computation is in flight (the node is parked until it ends)."""
        absent = self._absent.get(node.id, _NONE_ABSENT) if self._absent else _NONE_ABSENT
        # an in-memory input nobody hashed has no entry in its producer's hashes
        hashes = [ABSENT if e.producer in absent else self._output_hashes(e.producer).get(e.output)
                  for e in node.inputs]
        d = decide(node, self.graph, hashes, self.ctx)
        if absent and d.state != CACHED:
            sets = sorted({e.set_name for e in node.inputs if e.producer in absent})
            d = Decision(d.state, f"{d.reason}; partial: without {', '.join(sets)}", d.key, d.entry, d.components)
        self.decisions[node.id] = d
        if d.state != CACHED and node.stage.cached and d.key is not None:
            forced = self.ctx.overwrite or node.id in self.ctx.forced
            if forced and d.key in self._ran and node.id not in self._rerun_after_damage:
                entry = lookup(node, d.key, self.graph.params_of(node), self.ctx)
                if entry is not None and entry.trace_id in self._ran[d.key]:
                    # forced, but this very computation was stored earlier in this run
                    d = Decision(CACHED, "computed earlier in this run", d.key, entry, d.components)
                    self.decisions[node.id] = d
            if d.state != CACHED:
                scope = self._scope(node, d)
                if scope in self._parked:
                    self._parked[scope].append(node.id)
                    return None
                self._parked[scope] = []
                self._scope_of[node.id] = scope
        return d

    def _output_hashes(self, node_id: int) -> dict:
        """A finished node's outputs' content hashes (of its entry, for a hit: made on first use)."""
        hashes = self._st.hashes[node_id]
        if isinstance(hashes, Entry):
            hashes = self._st.hashes[node_id] = hashes.output_hashes()
        return hashes

    def _task(self, node: Node, d: Decision) -> Task:
        # a fully cached run builds no task; absolute, as every function-level import on a node's path:
        # a relative one costs ~1 µs more per call (Python 3.11 resolves its package in Python)
        from orchestrator.executors.task import InputValue, Task

        st = self._st
        inputs = []
        absent = self._absent.get(node.id, {})
        for e in node.inputs:
            if e.producer in absent:  # a partial aggregate: this set's input failed
                continue
            spec = next(o for o in self.graph.nodes[e.producer].stage.outputs if o.name == e.output)
            iv = InputValue(e.input, e.set_name, e.lazy, e.producer, cacher=spec.cacher)
            stored = self.outcomes[e.producer].outputs.get(e.output)
            if stored is None or ((e.producer, e.output) in st.values and not e.lazy):
                # never missing by accident: _rerun_producer checks availability before resubmitting
                iv.value, iv.in_memory = st.values[(e.producer, e.output)], True
            else:
                iv.stored = stored
            inputs.append(iv)
        log_path, metrics_path = self._node_files(node)
        cacheable = node.stage.cached and d.key is not None
        return Task(
            lock_scope=(self._scope_of.get(node.id) or self._scope(node, d)) if cacheable else None,
            node_id=node.id,
            stage_ref=(node.stage.fn.__module__, node.stage.fn.__qualname__),
            label=node.label,
            set_name=node.set_name,
            params=self.graph.params_of(node),
            key=d.key,
            components=d.components,
            inputs=inputs,
            project_root=str(self.ctx.project_root),
            param_sets={n: p.values for n, p in self.graph.param_sets.items()} if node.stage.kind == "aggregate" else {},
            hash_memory_outputs=any(self.graph.nodes[c].stage.cached for c in node.consumers),
            failed_sets={e.set_name: absent[e.producer] for e in node.inputs if e.producer in absent},
            log_path=log_path,
            metrics_path=metrics_path,
            force=self.ctx.overwrite or node.id in self.ctx.forced or node.id in self._rerun_after_damage,
            code_roots=self.ctx.fingerprinter.roots,
        )

    def _node_files(self, node: Node) -> tuple[str | None, str | None]:
        """The node's log and metrics stream in the run directory (None without one)."""
        d = self._run_dir
        if d is None:
            return None, None
        name = f"{node.id}-{node.stage.name}"
        return f"{d}/logs/{name}.log", f"{d}/metrics/{name}.jsonl"

    def _scope(self, node: Node, d: Decision) -> str:
        from orchestrator.core.lockscope import lock_scope  # only for a node that runs (absolute: see _task)

        params, ignore = self.graph.params_of(node), node.stage.ignore
        return lock_scope(node.stage, params, d.key,
                          lambda path: self.ctx.read_hash(node.set_name, params, path, ignore),
                          self.ctx.fingerprinter.function_node, self.ctx.visible_reads)

    # -- completion ----------------------------------------------------------------------------
    def _complete(self, r: TaskResult, ready: deque) -> None:
        node = self.graph.nodes[r.node_id]
        out = self.outcomes[r.node_id]
        scope = self._scope_of.pop(r.node_id, None)
        if scope is not None:
            ready.extend(self._parked.pop(scope, ()))
        if r.status == RAN and r.entry is not None:
            self._ran.setdefault(r.entry.key, set()).add(r.entry.trace_id)
        if r.status in (RAN, FAILED):  # a stage body ran: a tracked file it wrote must be hashed again
            self.ctx.forget_file_hashes()
        out.duration = r.duration
        stream = self._node_files(node)[1]
        if (stream is not None and r.status in (RAN, FAILED)
                and (r.stream if r.stream is not None else os.path.isfile(stream))):  # the task read it: no stat
            out.series = stream
        if r.status == DAMAGED:
            self._rerun_producer(node, r, ready)
            return
        if r.status == FAILED:
            out.status, out.error, out.error_type, out.traceback = FAILED, r.error, r.error_type, r.traceback
            out.log_path = r.log_path
            self.on_done(out)
            self._release_inputs(node)
            self._skip_downstream(node, ready)
            return
        out.status = r.status
        out.take(r.entry, r.outputs, r.reads)
        if r.status == RAN and r.entry is not None:
            out.index_sig = r.index_record
        if r.metrics is not None:
            out.metrics = r.metrics
        if r.status == CACHED and r.entry is not None and r.entry.series is not None:
            out.series = str(self.ctx.store.object_path(r.entry.series, verify=False))
        if r.status == CACHED:
            out.reason = "computed meanwhile by another process"
        st = self._st
        for spec in node.stage.outputs:
            if not spec.lazy and spec.name in r.values:
                waiting = self._waiting_consumers(node, spec.name)
                if waiting:
                    st.refs[(node.id, spec.name)] = waiting
                    st.values[(node.id, spec.name)] = r.values[spec.name]
        hashes = dict(r.hashes) if r.hashes else {name: o.object.hash for name, o in r.outputs.items()}
        self._finish(node, hashes, ready)

    def learn_written(self) -> None:
        """Hand the entries this run wrote to the planning's entry index (Store.learn_written), so the
        next planning neither reads nor lists them; once, at the end of the run: nothing per node
        but the signature each keeps (NodeOutcome.index_sig), no objects for the collector to walk."""
        learn = self.ctx.store.learn_written
        for out in self.outcomes:
            if out.index_sig is not None:
                learn(out.entry, out.index_sig)

    def index_hints(self) -> dict[str, dict[str, tuple]]:
        """The planner's hints to save with the entry index after the run (core.plan.signature_hints),
        with the read signatures of the entries the run wrote. Kept apart during the run: a hint makes
        the lookup of a node that is about to run first try a file that does not exist yet."""
        hints = signature_hints(self.graph, self.ctx)
        written: dict[str, dict[str, tuple]] = {}
        for out in self.outcomes:
            if out.index_sig is not None:
                entry = out.entry
                sigs = written.get(out.node.stage.id)
                if sigs is None:
                    sigs = written[out.node.stage.id] = {}
                sigs[keys.signature_of(entry.trace_id)] = (tuple(entry.reads), tuple(entry.files))
        for stage_id, sigs in written.items():
            hints[stage_id] = {**hints.get(stage_id, {}), **sigs}
        return hints

    def _finish(self, node: Node, hashes: dict | Entry, ready: deque) -> None:
        st = self._st
        st.hashes[node.id] = hashes
        self.on_done(self.outcomes[node.id])
        if node.inputs:
            self._release_inputs(node)
        if st.rerun_waiters:
            waiters = st.rerun_waiters.pop(node.id, None)
            if waiters is not None:  # a re-run after damage: only the consumers that asked wait on it
                ready.extend(waiters)
                return
        consumers = node.consumers
        remaining, outcomes = st.remaining, self.outcomes
        for c in dict.fromkeys(consumers) if len(consumers) > 1 else consumers:
            remaining[c] -= 1
            if remaining[c] == 0 and outcomes[c].status == PENDING:
                ready.append(c)

    def _waiting_consumers(self, node: Node, output: str) -> int:
        """How many input edges read `output` of `node` from consumers that will still release their
        inputs: those not finished, and those finished but re-run after damage (they release again)."""
        outcomes, again, nodes, producer = self.outcomes, self._st.rerun_waiters, self.graph.nodes, node.id
        consumers = node.consumers
        waiting = 0
        for c in dict.fromkeys(consumers) if len(consumers) > 1 else consumers:
            if outcomes[c].status == PENDING or c in again:
                inputs = nodes[c].inputs
                if len(inputs) > _FEW_INPUTS:
                    waiting += self._edges_into(c).get((producer, output), 0)
                else:
                    for e in inputs:
                        if e.producer == producer and e.output == output:
                            waiting += 1
        return waiting

    def _edges_into(self, consumer: int) -> dict[tuple[int, str], int]:
        """(producer, output) -> how many of the consumer's input edges read it; made once per
        consumer with many inputs, so that an aggregate over N producers costs N, not N per producer."""
        counts = self._edge_counts.get(consumer)
        if counts is None:
            counts = self._edge_counts[consumer] = {}
            for e in self.graph.nodes[consumer].inputs:
                k = (e.producer, e.output)
                counts[k] = counts.get(k, 0) + 1
        return counts

    def _release_inputs(self, node: Node) -> None:
        """One consumer of each of its inputs is done: an in-memory value nobody else waits for is let go."""
        refs = self._st.refs
        if not refs:
            return
        for e in node.inputs:
            k = (e.producer, e.output)
            left = refs.get(k)
            if left is None:
                continue
            if left <= 1:
                del refs[k]
                self._st.values.pop(k, None)
            else:
                refs[k] = left - 1

    def _skip_downstream(self, failed: Node, ready: deque) -> None:
        """Skip what needs `failed`'s outputs and has not started. A node already in flight (its
        inputs were intact) finishes with its own outcome, and shields what depends only on it. A
        partial aggregate goes on without the sets whose inputs are lost (unless that is all of them)."""
        nodes = self.graph.nodes
        blocked = {failed.id}
        # the consumers of blocked nodes, in node order (a topological order: a node's producers are
        # settled before it is looked at), rather than every later node: a run with many failures
        # costs what they block, not failures x nodes
        candidates = list(dict.fromkeys(failed.consumers))
        heapq.heapify(candidates)
        queued = set(candidates)
        while candidates:
            node = nodes[heapq.heappop(candidates)]
            if not any(e.producer in blocked for e in node.inputs):
                continue
            out = self.outcomes[node.id]
            if node.stage.partial and out.status == PENDING and node.id not in self._in_flight \
                    and self._go_on_without(node, blocked, failed, ready):
                continue
            if out.status == PENDING and node.id not in self._in_flight:
                out.status, out.skipped_because = SKIPPED, failed.label
                self.on_done(out)
                self._release_inputs(node)
            elif out.status != SKIPPED:
                continue
            blocked.add(node.id)
            for c in node.consumers:
                if c not in queued:
                    queued.add(c)
                    heapq.heappush(candidates, c)

    def _go_on_without(self, node: Node, blocked: set[int], failed: Node, ready: deque) -> bool:
        """Count the lost producers of a partial aggregate as done; False when it has nothing left."""
        absent = self._absent.setdefault(node.id, {})
        for e in node.inputs:
            if e.producer in blocked and e.producer not in absent:
                absent[e.producer] = f"{self.graph.nodes[e.producer].label} " + (
                    "failed" if e.producer == failed.id else f"was skipped (upstream {failed.label} failed)")
                self._st.remaining[node.id] -= 1
        if all(e.producer in absent for e in node.inputs):
            return False  # no set succeeded: nothing to aggregate
        if self._st.remaining[node.id] == 0:
            ready.append(node.id)
        return True

    def _inputs_available(self, node: Node) -> bool:
        """Every input either stored or still held in memory (a re-run needs them again)."""
        return all(e.output in self.outcomes[e.producer].outputs or (e.producer, e.output) in self._st.values
                   for e in node.inputs)

    def _rerun_producer(self, consumer: Node, r: TaskResult, ready: deque) -> None:
        """A stored input was damaged (quarantined by the store): recompute its producer, then retry."""
        p = r.damaged_producer
        st = self._st
        error = r.error
        if p is not None and not self._inputs_available(self.graph.nodes[p]):
            error += (f"; its producer {self.graph.nodes[p].label} cannot be recomputed in this run (an in-memory "
                      f"input of it was already released): run again")
            p = None
        recomputed = p is not None and p in self._rerun_after_damage and p not in st.rerun_waiters
        if recomputed and self.outcomes[p].status == RAN and (consumer.id, p) not in self._retried:
            # it looked while the object was quarantined, before its producer was recomputed: retry once
            self._retried.add((consumer.id, p))
            ready.append(consumer.id)
            return
        if p is None or recomputed:
            out = self.outcomes[consumer.id]
            out.status, out.error, out.error_type = FAILED, error, "DamagedObjectError"
            self.on_done(out)
            self._release_inputs(consumer)
            self._skip_downstream(consumer, ready)
            return
        waiting = st.rerun_waiters.setdefault(p, [])
        waiting.append(consumer.id)
        if len(waiting) > 1:
            return
        self._rerun_after_damage.add(p)
        producer = self.graph.nodes[p]
        for e in producer.inputs:  # an input it reads from memory is needed again
            k = (e.producer, e.output)
            if k in st.refs:
                st.refs[k] += 1
        d = self.decisions[p]
        self.decisions[p] = Decision(RUN, f"stored output damaged: {r.error}", d.key, None, d.components)
        self.outcomes[p].reason = self.decisions[p].reason
        self._submit(producer, self.decisions[p])

