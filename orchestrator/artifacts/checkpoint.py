"""Self-describing torch checkpoints: the weights plus what it takes to rebuild the model.

A checkpoint written here holds the model's state_dict, its class (module + qualified name) and its
JSON-able init arguments, so `load_checkpoint(path)` gives back a working `nn.Module` on any machine
without the reader naming the class. External scripts (e.g. a torchrun training script) import
only this module: it imports nothing of orch's but `errors`, and torch only inside functions, so
`import orchestrator` stays cheap and this file works wherever torch does.

Where the init arguments come from, first match wins:
  1. `init_args=` given to save_checkpoint (a dict of keyword arguments, or {"args": [...], "kwargs": {...}});
  2. the class is decorated with `@capture_init_args`: every construction records its arguments;
  3. the model has an `init_args` attribute holding a dict of keyword arguments (a common convention);
  4. the class's __init__ takes no required argument: rebuilt with none.
Otherwise the weights and class are still saved (hours of training are never lost over this) and
loading with `model=True` raises CheckpointError saying how to fix it, while `model=<instance>`
loads the weights into a model you built.

File format (torch.save of a dict, loadable with weights_only=True when its extras are plain data):
    {"__orch__": "orch-checkpoint", "version": 1, "kind": "module" | "object", "device": "cpu",
     kind "module": "model": state_dict, "model_class": "pkg.mod:Net", "model_file": path,
                    "init_args": {"args": [...], "kwargs": {...}} | None, "init_args_problem": str | None,
                    "training": bool, "optimizer": state_dict | None, "optimizer_class": str | None,
                    "extra": {name: value}, "has_extras": bool
     kind "object": "value": the saved tensor / dict of tensors / plain data}
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys

from ..errors import CheckpointError

FORMAT = "orch-checkpoint"
VERSION = 1
_INIT_ATTR = "_orch_init_args"

__all__ = ["save_checkpoint", "load_checkpoint", "capture_init_args", "CheckpointError"]


# ---------------------------------------------------------------------------------- init arguments


def capture_init_args(cls):
    """Class decorator: remember the arguments every instance was constructed with.

    They are stored on the instance as `_orch_init_args` ({"args": [...], "kwargs": {...}}) and
    written into checkpoints so the model can be rebuilt. Recorded only when `cls.__init__` is the
    constructor that actually ran for the instance's class: a subclass that overrides __init__
    without being decorated itself records nothing (its arguments could differ), rather than
    something wrong.
    """
    if not isinstance(cls, type):
        raise TypeError(f"@capture_init_args decorates a class, got {cls!r}")
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if type(self).__init__ is __init__ and _INIT_ATTR not in self.__dict__:
            # set before the real __init__ so nn.Module.__setattr__ bookkeeping is not involved
            object.__setattr__(self, _INIT_ATTR, {"args": list(args), "kwargs": dict(kwargs)})
        original(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def _init_args_of(model, given) -> tuple[dict | None, str | None]:
    """({"args", "kwargs"} or None, why not) following the order in the module docstring."""
    if given is not None:
        args = given if isinstance(given, dict) and set(given) == {"args", "kwargs"} else None
        if args is None:
            if not isinstance(given, dict):
                raise CheckpointError(f"init_args must be a dict of keyword arguments, got {type(given).__name__}")
            args = {"args": [], "kwargs": dict(given)}
        source = "init_args="
    elif isinstance(model.__dict__.get(_INIT_ATTR), dict):
        args, source = model.__dict__[_INIT_ATTR], "@capture_init_args"
    elif isinstance(getattr(model, "init_args", None), dict):
        args, source = {"args": [], "kwargs": dict(model.init_args)}, "the model's init_args attribute"
    elif _no_required_args(type(model)):
        args, source = {"args": [], "kwargs": {}}, None
    else:
        cls = type(model).__qualname__
        return None, (f"the init arguments of {cls} are unknown: decorate {cls} with "
                      f"@orchestrator.checkpoint.capture_init_args, or pass init_args={{...}} when saving")
    try:
        text = json.dumps(args, allow_nan=True)
    except (TypeError, ValueError) as e:
        return None, (f"the init arguments of {type(model).__qualname__} (from {source}) are not JSON-able ({e}); "
                      f"pass plain numbers, strings, lists and dicts, or give init_args={{...}} when saving")
    return json.loads(text), None


def _no_required_args(cls) -> bool:
    import inspect

    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return False
    params = list(sig.parameters.values())[1:]
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


# ------------------------------------------------------------------------------------------ saving


def save_checkpoint(model, path, *, optimizer=None, init_args=None, **extra) -> None:
    """Write `model` (an nn.Module; DDP/DataParallel/torch.compile wrappers are unwrapped) to `path`.

    `optimizer` (an Optimizer or its state_dict) and any `extra` values (epoch=3, loss=0.1, ...) go
    with it; loading then gives all of them back as a dict (see load_checkpoint). The file is written
    to a temporary name and renamed, so a reader or a resumed run never sees half a checkpoint.
    In a DDP job call it on rank 0 only.
    """
    import torch

    module = unwrap_model(model)
    if not isinstance(module, torch.nn.Module):
        raise CheckpointError(
            f"save_checkpoint expects an nn.Module, got {type(model).__name__}; to save tensors or a dict "
            f"of tensors use torch.save or CheckpointCacher"
        )
    _atomic_torch_save(module_payload(module, optimizer=optimizer, init_args=init_args, extra=extra), path)


def unwrap_model(model):
    """The user's module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    import torch

    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def module_payload(module, *, optimizer=None, init_args=None, extra: dict | None = None) -> dict:
    """The dict that is torch.save'd for a model (see the module docstring for the layout)."""
    import torch

    cls = type(module)
    args, problem = _init_args_of(module, init_args)
    if isinstance(optimizer, torch.optim.Optimizer):
        opt_state, opt_class = optimizer.state_dict(), _qualified(type(optimizer))
    elif optimizer is None or isinstance(optimizer, dict):
        opt_state, opt_class = optimizer, None
    else:
        raise CheckpointError(f"optimizer must be a torch Optimizer or its state_dict, got {type(optimizer).__name__}")
    state = module.state_dict()
    return {
        "__orch__": FORMAT,
        "version": VERSION,
        "kind": "module",
        "device": _first_device(state),
        "model": state,
        "model_class": _qualified(cls),
        "model_file": _defining_file(cls),
        "init_args": args,
        "init_args_problem": problem,
        "training": bool(module.training),
        "optimizer": opt_state,
        "optimizer_class": opt_class,
        "extra": dict(extra or {}),
        "has_extras": optimizer is not None or bool(extra),
    }


def payload_of(obj) -> dict:
    """What CheckpointCacher saves for a stage's output: a module (with its optimizer and extras
    when the output is a training-state dict {"model": module, ...}) or any other object."""
    import torch

    if isinstance(obj, torch.nn.Module):
        return module_payload(unwrap_model(obj))
    if isinstance(obj, dict) and isinstance(obj.get("model"), torch.nn.Module):
        extra = {k: v for k, v in obj.items() if k not in ("model", "optimizer")}
        payload = module_payload(unwrap_model(obj["model"]), optimizer=obj.get("optimizer"), extra=extra)
        payload["has_extras"] = True  # saved as a dict, loaded as a dict
        return payload
    return object_payload(obj)


def object_payload(value) -> dict:
    """The dict that is torch.save'd for a tensor, a dict of tensors or other plain data."""
    return {"__orch__": FORMAT, "version": VERSION, "kind": "object", "device": _first_device(value), "value": value}


def _atomic_torch_save(payload: dict, path) -> None:
    import torch

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _qualified(cls) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _defining_file(cls) -> str | None:
    mod = sys.modules.get(cls.__module__)
    f = getattr(mod, "__file__", None)
    return os.path.abspath(f) if f else None


def _first_device(obj) -> str:
    """Where the first tensor lives ("cpu" when there is none): the default place to load back to."""
    import torch

    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            return str(x.device)
        if isinstance(x, dict):
            stack.extend(reversed(list(x.values())))
        elif isinstance(x, (list, tuple)):
            stack.extend(reversed(x))
    return "cpu"


def is_plain(obj, _depth: int = 0) -> bool:
    """True if torch.load(weights_only=True) can read `obj` back: tensors, numbers, strings, None,
    dtypes/devices and dicts/lists/tuples of them. Anything else needs full unpickling."""
    import collections

    import torch

    if _depth > 100:
        return False
    if obj is None or type(obj) in (bool, int, float, str, complex, torch.dtype, torch.device, torch.Size):
        return True
    if type(obj) in (torch.Tensor, torch.nn.Parameter):
        return True
    if type(obj) in (dict, collections.OrderedDict):
        return all(is_plain(k, _depth + 1) and is_plain(v, _depth + 1) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return all(is_plain(v, _depth + 1) for v in obj)
    return False


# ----------------------------------------------------------------------------------------- loading


def load_checkpoint(path, *, device=None, model=True, optimizer=None, skip=(), weights_only=True):
    """Read a checkpoint written by save_checkpoint (or CheckpointCacher); returns what was saved.

    - A model saved alone (`save_checkpoint(model, path)`) comes back as the nn.Module, rebuilt
      from its class and init arguments, weights loaded, in the train/eval mode it was saved in.
    - A model saved with an optimizer or extras comes back as a dict of what was saved:
      {"model": nn.Module, "optimizer": state_dict (when one was saved), **extras} (e.g. "epoch").
    - A tensor or dict of tensors (CheckpointCacher) comes back as it was.
    - Any other torch file (e.g. a plain `torch.save(model.state_dict())`) comes back as torch.load
      gives it; with `model=<instance>` a state_dict is loaded into that instance and it is returned.

    device: "cpu", "cuda:0", a torch.device; default None keeps every tensor where it was saved,
        or puts it on the CPU when that device is not available here.
    model: True rebuilds the module; False gives the raw state_dict instead (no import of the class);
        an nn.Module instance gets the weights loaded into it (strict) and is returned in its place.
    optimizer: None keeps the optimizer state_dict as saved; an Optimizer instance gets it loaded
        (and is returned in its place); False drops it.
    skip: names of parts to drop (e.g. ("optimizer",) or an extra's name).
    weights_only: torch.load's safe mode (default); a checkpoint holding arbitrary Python objects
        needs weights_only=False, only for files you trust.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}; check the path, or that the script meant to write it did")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    payload = _torch_load(path, device, weights_only)
    skip = set(skip)
    if optimizer is False:
        skip.add("optimizer")
    if not (isinstance(payload, dict) and payload.get("__orch__") == FORMAT):
        return _load_foreign(payload, path, model)
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint {path} was written by a newer orch (format {payload['version']}); upgrade orch")
    if payload["kind"] == "object":
        return payload["value"]
    return _load_module(payload, path, device, model, optimizer, skip)


def _load_module(payload: dict, path: str, device, model, optimizer, skip: set):
    import torch

    state = payload["model"]
    if model is False:
        built = state
    elif isinstance(model, torch.nn.Module):
        built = _load_state(unwrap_model(model), state, path, payload["model_class"])
        target = _target_device(state, device)
        if target is not None:
            built.to(target)
    elif model is True:
        built = _rebuild(payload, path, device)
    else:
        raise CheckpointError(f"load_checkpoint(model=...) takes True, False or an nn.Module, got {model!r}")
    if not payload.get("has_extras"):
        return built
    result = {"model": built}
    if "optimizer" not in skip and (payload.get("optimizer") is not None or isinstance(optimizer, torch.optim.Optimizer)):
        opt_state = payload.get("optimizer")
        if isinstance(optimizer, torch.optim.Optimizer):
            if opt_state is None:
                raise CheckpointError(f"checkpoint {path} holds no optimizer state to load into {type(optimizer).__name__}")
            optimizer.load_state_dict(opt_state)
            opt_state = optimizer
        result["optimizer"] = opt_state
    for name, value in payload.get("extra", {}).items():
        if name not in skip:
            result[name] = value
    return result


def _rebuild(payload: dict, path: str, device):
    """Import the class, construct it with the saved init args on the target device, load weights."""
    import torch

    qualname = payload["model_class"]
    if payload.get("init_args") is None:
        problem = payload.get("init_args_problem") or "its init arguments were not saved"
        raise CheckpointError(
            f"checkpoint {path} holds the weights of {qualname} but cannot rebuild it: {problem}. "
            f"Or build the model yourself and load the weights into it: load_checkpoint(path, model={qualname.split(':')[-1]}(...))"
        )
    cls = import_class(qualname, payload.get("model_file"), path)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise CheckpointError(f"checkpoint {path}: {qualname} is not an nn.Module class; refusing to construct it")
    state = payload["model"]
    target = _target_device(state, device) or torch.device("cpu")
    args = payload["init_args"]
    try:
        with torch.device(target):
            built = cls(*args.get("args", []), **args.get("kwargs", {}))
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path}: rebuilding {qualname}(*{args.get('args')}, **{args.get('kwargs')}) failed: "
            f"{type(e).__name__}: {e}; has the class's signature changed since the checkpoint was written?"
        ) from e
    built = _load_state(built, state, path, qualname)
    built.train(bool(payload.get("training", False)))
    return built


def _load_state(module, state: dict, path: str, qualname: str):
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path}: the saved weights of {qualname} do not fit the model: {e}"
        ) from e
    return module


def _target_device(state, device):
    """The explicit device, else the device the (already mapped) weights are on, else None."""
    import torch

    if device is not None:
        return torch.device(device)
    first = _first_device(state)
    return torch.device(first) if first else None


def import_class(qualname: str, file: str | None, path: str = "?"):
    """`pkg.mod:Outer.Inner` -> the class. A class defined in a script run as __main__ (e.g.
    `torchrun external/train.py`) is found in that file, which is imported under another name only
    if its work is guarded by `if __name__ == "__main__":` (otherwise importing it would run it)."""
    module_name, _, attr = qualname.partition(":")
    try:
        if module_name == "__main__":
            module = _main_module(file, qualname, path)
        else:
            module = importlib.import_module(module_name)
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: cannot import the model class {qualname} ({type(e).__name__}: {e}); run from the "
            f"project directory so its modules are importable, or pass model=False for the raw weights"
        ) from e


def _main_module(file: str | None, qualname: str, path: str):
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if file and main_file and os.path.abspath(main_file) == file:
        return main
    if not file or not os.path.isfile(file):
        raise ImportError(f"the script that defined it ({file}) is not available")
    import ast
    import importlib.util

    with open(file, encoding="utf-8") as f:
        if not _has_main_guard(ast.parse(f.read(), file)):
            raise CheckpointError(
                f"checkpoint {path}: {qualname} was defined in the script {file}, which has no "
                f"`if __name__ == \"__main__\":` guard, so importing it would run it; move the class into a module"
            )
    name = "_orch_main_" + os.path.splitext(os.path.basename(file))[0]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _has_main_guard(tree) -> bool:
    import ast

    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.dump(node.test) and "__main__" in ast.dump(node.test):
            return True
    return False


def _load_foreign(payload, path: str, model):
    """A torch file not written by orch: returned as is, or loaded into the given model."""
    import torch

    if isinstance(model, torch.nn.Module):
        if not isinstance(payload, dict):
            raise CheckpointError(f"{path} holds a {type(payload).__name__}, not a state_dict to load into the model")
        state = payload.get("model", payload.get("state_dict", payload))
        return _load_state(unwrap_model(model), state, path, type(model).__qualname__)
    return payload


def _torch_load(path: str, device, weights_only: bool):
    import pickle
    import zipfile

    import torch

    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if not head.startswith(b"\x80"):  # neither torch's zip format nor its legacy pickle format
            raise CheckpointError(f"{path} is not a torch checkpoint (or is truncated)")
    try:
        return torch.load(path, map_location=_map_location(device), weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if weights_only:
            raise CheckpointError(
                f"checkpoint {path} holds Python objects other than tensors and plain data, which the safe loader "
                f"refuses ({_unsafe_reason(e)}); if you trust the file, load it with weights_only=False"
            ) from e
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {e}") from e
    except RuntimeError as e:
        if "zip" in str(e).lower() or "magic" in str(e).lower() or "invalid load key" in str(e).lower():
            raise CheckpointError(f"{path} is not a torch checkpoint (or is truncated): {e}") from e
        raise


def _unsafe_reason(e: Exception) -> str:
    """torch's message names the offending global after a long preamble: keep that part."""
    text = str(e)
    for line in text.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()[:300]
    return text.splitlines()[0][:300] if text else type(e).__name__


def _map_location(device):
    """An explicit device must exist here; the default keeps each tensor on its saved device when it
    exists and falls back to the CPU otherwise (a GPU checkpoint opened on a laptop)."""
    import torch

    if device is None:
        return _restore_or_cpu
    dev = torch.device(device)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise CheckpointError(f"device {device!r} is not available on this machine; use device='cpu' or leave device unset")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise CheckpointError(f"device {device!r} is not available on this machine; use device='cpu' or leave device unset")
    return dev


def _restore_or_cpu(storage, location: str):
    import torch

    if location.startswith("cuda"):
        index = int(location.split(":", 1)[1]) if ":" in location else 0
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            return None  # torch's default: restore where it was
        return storage  # already on the CPU
    if location.startswith("mps") and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return storage
    return None
