"""What a node needs from a cluster scheduler: `@stage(resources={...})`, a parameter file's
`orch: {resources: {stage: {...}}}` section and the run's `--slurm-*` options, merged in that order.

Resources say *where and with what* a node runs, never *what* it computes, so they are no part of
any key: `Stage.declaration()` leaves them out and a parameter file's `orch:` section is not a
parameter. Validated where they are written (the declaration, the file), so that a typo fails at
once with the stage or file named, not after a job waited in the queue. Imported by stage.py and
paramfiles.py: nothing heavy here.
"""

from __future__ import annotations

import re

from .errors import ParamsError, StageDefinitionError

#: key -> (what it takes, validator). Times are Slurm's formats; mem is Slurm's (a number of MB, or
#: with a unit: 500M, 32G, 1T).
KEYS = ("gpus", "cpus", "mem", "time", "partition", "account", "qos", "constraint", "nodes", "requeue")
#: How many times a job warned of its end (time limit, preemption) is requeued before its node fails.
DEFAULT_REQUEUE = 3
# patterns compiled by re on first use (re caches them): a cached run imports this module, uses neither
_MEM = r"^\d+[KMGT]?$"
_TIME = r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$"


def time_minutes(value) -> int:
    """A Slurm time limit in whole minutes (rounded up): minutes as an int, "MM", "MM:SS", "HH:MM:SS",
    "D-HH", "D-HH:MM", "D-HH:MM:SS". ValueError if it is none of these."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 1:
            raise ValueError(value)
        return value
    m = re.match(_TIME, str(value).strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(value)
    days, a, b, c = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + a * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = a * 60 + int(b)
    else:  # MM
        seconds = a * 60
    if seconds < 1:
        raise ValueError(value)
    return -(-seconds // 60)


def _check_one(key: str, value) -> str | None:
    """Why `value` is not valid for `key`, or None."""
    if key in ("gpus", "cpus", "nodes", "requeue"):
        low = 0 if key in ("gpus", "requeue") else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"an integer >= {low}"
    elif key == "mem":
        if isinstance(value, bool) or not (isinstance(value, int) and value > 0
                                           or isinstance(value, str) and re.match(_MEM, value, re.IGNORECASE)):
            return "Slurm's memory format: MB as an integer, or a string such as '500M', '32G'"
    elif key == "time":
        try:
            time_minutes(value)
        except ValueError:
            return "Slurm's time format: minutes, 'HH:MM:SS' or 'D-HH:MM:SS'"
    elif not isinstance(value, str) or not value:
        return "a non-empty string"
    return None


def check(resources, where: str, error=StageDefinitionError) -> dict:
    """A validated copy of a resources mapping; `where` names the stage or file in the error."""
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise error(f"{where}: resources= must be a mapping such as {{'cpus': 4, 'mem': '16G'}}, got {resources!r}")
    out = {}
    for key, value in resources.items():
        if key not in KEYS:
            import difflib

            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise error(f"{where}: unknown resource {key!r}; {hint}known: {', '.join(KEYS)}")
        why = _check_one(key, value)
        if why is not None:
            raise error(f"{where}: resource {key}={value!r} must be {why}")
        out[key] = value
    return out


#: The keys of a parameter file's `orch:` section (settings of the run, never parameters).
ORCH_SECTION_KEYS = ("resources",)


def check_orch_section(section, source: str) -> dict:
    """A parameter file's `orch:` section, validated: {"resources": {stage name: resources}}."""
    if not isinstance(section, dict):
        raise ParamsError(f"{source}: 'orch' must be a mapping, e.g. orch: {{resources: {{train: {{gpus: 1}}}}}}")
    unknown = [k for k in section if k not in ORCH_SECTION_KEYS]
    if unknown:
        raise ParamsError(f"{source}: unknown key orch.{unknown[0]}; the orch: section takes "
                          f"{', '.join(ORCH_SECTION_KEYS)} ('orch' is reserved: it holds settings of the run, "
                          f"not parameters)")
    per_stage = section.get("resources") or {}
    if not isinstance(per_stage, dict):
        raise ParamsError(f"{source}: orch.resources must map stage names to resources, "
                          f"e.g. orch: {{resources: {{train: {{gpus: 1}}}}}}")
    return {"resources": {str(stage): check(res, f"{source}: orch.resources.{stage}", ParamsError)
                          for stage, res in per_stage.items()}}


def check_stage_names(param_sets, stage_names) -> None:
    """Every stage an `orch.resources` section names exists in the experiment (a typo would
    silently leave a stage with its default resources)."""
    known = set(stage_names)
    for ps in param_sets:
        for name in (ps.orch or {}).get("resources", {}):
            if name not in known:
                import difflib

                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ParamsError(f"{ps.source}: orch.resources names stage {name!r}, which the experiment does "
                                  f"not have; {hint}its stages: {', '.join(sorted(known))}")


def for_node(stage, param_set_orch: dict | None, run_overrides: dict) -> dict:
    """The resources a node is submitted with: the stage's declaration, then its parameter set's
    `orch.resources.<stage>`, then the run's options (`--slurm-partition/-account/-time`)."""
    merged = dict(getattr(stage, "resources", None) or {})
    merged.update(((param_set_orch or {}).get("resources") or {}).get(stage.name, {}))
    merged.update({k: v for k, v in run_overrides.items() if v is not None})
    return merged
