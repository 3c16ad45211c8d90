"""The core: what the DAG is, what must run and when (see ARCHITECTURE.md)."""
