"""Adapters between orch and other frameworks, one module each, imported only by the code that uses
them (`from orchestrator.integrations.lightning import OrchLogger`): `import orchestrator` and
`orch --help` never import a framework."""
