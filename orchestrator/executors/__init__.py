"""Executors: where a node runs (see ARCHITECTURE.md)."""
