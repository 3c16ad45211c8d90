"""Artifacts: the torch checkpoint format, file references, canonical pickles and loading the
artifacts of past runs (see ARCHITECTURE.md). The cacher classes users name are in
orchestrator.cachers."""
