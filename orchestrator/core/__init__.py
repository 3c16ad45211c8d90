"""The core: what the DAG is, what must run and when (see ARCHITECTURE.md).

- experiment: load the user's experiment and wire its graph;
- graph: nodes (a stage on a parameter set) and their input edges, in topological order;
- keys: the key scheme, every name kept in the store (golden-tested);
- plan: the pure planning function (cached / run / pending, and why);
- runner: the run loop, with an injected executor;
- lockscope: which concurrent computations are the same one;
- status: the one vocabulary of node states.
"""
