"""orch: a cached DAG experiment orchestrator. Public API only; importing this is cheap."""

from .cachers import Cacher, JsonCacher, Lazy, PickleCacher
from .errors import OrchError
from .record import Record
from .stage import aggregate, stage

__all__ = ["stage", "aggregate", "Record", "Lazy", "Cacher", "PickleCacher", "JsonCacher", "OrchError"]
