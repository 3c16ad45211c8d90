"""Runs: the record each `orch run` leaves (manifest), reading them back, the HTML report and
DAG drawing, and what the CLI prints (see ARCHITECTURE.md)."""
