"""Cachers turn a stage output into a file or directory in the store and back.

A cacher is small and stateless: `save(obj, path) -> metadata` writes the object to `path` (the
runner hashes and moves it into the store) and returns JSON-able metadata that comes back to
`load(path, metadata, **options)`. Its identity (class and `config()`) is part of the node's cache
key, so switching cachers never loads an object with the wrong reader; it is also kept in each
entry, so `orchestrator.load()` can rebuild the cacher of a past run (`from_config`).

Writing a custom cacher: subclass `Cacher`, set `extension`, implement save/load, and if it takes
constructor arguments return them as a dict from `config()` (that dict must rebuild it:
`cls(**config)`). A cacher that does not write a new file — FileReferenceCacher moves or references
files the stage already made — overrides `prepare()` instead of `save()`. (ARCHITECTURE.md: where a
new cacher goes.)

The built-in cachers are defined in this module on purpose: a cacher's identity is
"module:QualName" + config, recorded in every entry and hashed into every key, so these classes keep
the public module path `orchestrator.cachers` (their heavy parts live in orchestrator.artifacts).
Nothing here imports torch or numpy at module level: `import orchestrator` stays cheap.
"""

from __future__ import annotations

import json
import os

from .errors import StageDefinitionError, StageOutputError

TYPE_CHECKING = False  # typing.TYPE_CHECKING: a cached run does not import typing
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = ["Cacher", "OutputTarget", "PickleCacher", "JsonCacher", "NumpyCacher", "CheckpointCacher",
           "LightningCheckpointCacher", "FileReferenceCacher", "Lazy", "LazyArtifact", "as_cacher"]


class OutputTarget:
    """Where one output is being written while its stage finishes (handed to Cacher.prepare). A
    plain class, not a dataclass: defining one costs 2-3 M instructions at import, on every run."""

    def __init__(self, stage: str, output: str, path: str, staging: Path | str, record: Any = None):
        self.stage = stage  # stage name, for messages
        self.output = output  # artifact name, for messages
        self.path = path  # a free path in the staging area for the cacher's file (or directory)
        self._staging = staging
        self.record = record  # the running Record (FileReferenceCacher tracks external files through it)

    @property
    def staging(self) -> Path:
        """The stage's staging root: paths under it are the stage's own files (a Path made on first use)."""
        from pathlib import Path  # (a stage that runs: a cached run does not import pathlib)

        if type(self._staging) is not Path:
            self._staging = Path(self._staging)
        return self._staging

    def __repr__(self) -> str:
        return (f"OutputTarget(stage={self.stage!r}, output={self.output!r}, path={self.path!r}, "
                f"staging={self.staging!r}, record={self.record!r})")


class Cacher:
    """Base class: subclass and implement save/load; set `extension` for readable object names."""

    extension = ""

    def save(self, obj: Any, path: str) -> dict | None:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, path: str, metadata: dict | None = None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def config(self) -> Any:
        """JSON-able settings that change what save() writes; part of the cache key. A dict here
        must be the constructor's keyword arguments (see from_config)."""
        return None

    @classmethod
    def from_config(cls, config: Any) -> Cacher:
        """Rebuild the cacher recorded in an entry (for loading artifacts of past runs)."""
        return cls(**config) if isinstance(config, dict) else cls()

    def identity(self) -> tuple:
        cls = type(self)
        return (f"{cls.__module__}:{cls.__qualname__}", self.config())

    def prepare(self, value: Any, out: OutputTarget) -> tuple[str, str, dict | None]:
        """Turn `value` into one file or directory ready for the store: (its path, the stored
        object's extension, metadata). The default calls save() on `out.path`."""
        metadata = self.save(value, out.path)
        if not os.path.lexists(out.path):
            raise StageOutputError(f"stage {out.stage}: {self!r}.save() wrote nothing for output {out.output!r}")
        return out.path, self.extension, metadata

    def prepare_in_memory(self, value: Any, out: OutputTarget) -> tuple[str | bytes, str, dict | None]:
        """prepare(), except that a cacher which makes a small object's bytes in memory may return
        those bytes instead of a path: the store hashes them and writes the object directly, with no
        staging file to write, stat, read back and remove. The bytes must be what save() writes."""
        return self.prepare(value, out)

    def exported_paths(self, path: str, metadata: dict | None) -> list[str]:
        """The files `orch get` copies out for a stored object (normally the object itself)."""
        return [path]

    def keep_in_memory(self, value: Any) -> bool:
        """Whether consumers in this run may receive the value the stage returned as it is. False
        when load() would give something else (a path that moved into the store, a checkpoint file
        that loads as a model): the value is dropped and consumers load the stored artifact."""
        return True

    def __repr__(self) -> str:
        return type(self).__name__


class PickleCacher(Cacher):
    extension = ".pkl"

    def __init__(self, protocol: int = 5):
        self.protocol = protocol

    def config(self):
        return {"protocol": self.protocol}

    def save(self, obj, path):
        from .artifacts import canonical

        with open(path, "wb") as f:  # sets in sorted order: equal values, equal bytes (early cutoff)
            canonical.dump(obj, f, protocol=self.protocol)
        return None

    def prepare_in_memory(self, value, out):
        if type(self).save is not PickleCacher.save or type(self).prepare is not Cacher.prepare:
            return self.prepare(value, out)  # a subclass that writes its own file
        import orchestrator.artifacts.canonical as canonical  # per node: absolute (see core.runner.Runner._task)

        with _SmallOrFile(out.path) as f:
            canonical.dump(value, f, protocol=self.protocol)
        return f.result(), self.extension, None

    def load(self, path, metadata=None):
        import pickle

        with open(path, "rb") as f:
            return pickle.load(f)


class JsonCacher(Cacher):
    extension = ".json"

    def __init__(self, indent: int | None = 1):
        self.indent = indent

    def config(self):
        return {"indent": self.indent}

    def save(self, obj, path):

        with open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=self.indent, allow_nan=True)
        return None

    def prepare_in_memory(self, value, out):
        if type(self).save is not JsonCacher.save or type(self).prepare is not Cacher.prepare:
            return self.prepare(value, out)  # a subclass that writes its own file
        # save()'s text file holds the same bytes: ASCII (ensure_ascii), no newline translation on POSIX
        return json.dumps(value, indent=self.indent, allow_nan=True).encode("utf-8"), self.extension, None

    def load(self, path, metadata=None):

        with open(path, encoding="utf-8") as f:
            return json.load(f)


class _SmallOrFile:
    """A binary file-like object that keeps what is written in memory up to IN_MEMORY_MAX bytes,
    then moves it to a file at `path` and writes on there: a small pickle needs no file, a large
    one is never held in memory whole. `result()`: the bytes, or `path` once it spilled."""

    IN_MEMORY_MAX = 4 << 20

    def __init__(self, path: str):
        self.path = path
        self._buf: bytearray | None = bytearray()
        self._file = None

    def write(self, data) -> int:
        n = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
        if self._file is None and len(self._buf) + n <= self.IN_MEMORY_MAX:
            self._buf += data
            return n
        from .fsutil import write_all  # in slices (fsutil.LARGE_WRITE); `import orchestrator` does not load fsutil

        if self._file is None:
            self._file = open(self.path, "wb", buffering=0)  # pickle hands over 64 KiB frames (or the whole pickle)
            write_all(self._file.fileno(), self._buf)
            self._buf = None
        write_all(self._file.fileno(), data)
        return n

    def result(self) -> str | bytes:
        return self.path if self._buf is None else bytes(self._buf)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()


class NumpyCacher(Cacher):
    """One numpy array as a .npy file; `load(mmap_mode="r")` maps it instead of reading it
    (stored objects are read-only, so use "r" or copy-on-write "c", never "r+")."""

    extension = ".npy"

    def __init__(self, allow_pickle: bool = False):
        self.allow_pickle = allow_pickle

    def config(self):
        return {"allow_pickle": self.allow_pickle}

    def save(self, obj, path):
        import numpy as np

        if not isinstance(obj, np.ndarray):
            raise TypeError(f"NumpyCacher saves numpy arrays, got {type(obj).__name__}; "
                            f"return np.asarray(...) or use PickleCacher")
        if obj.dtype.hasobject and not self.allow_pickle:
            raise TypeError("an array of Python objects needs NumpyCacher(allow_pickle=True) (or PickleCacher)")
        with open(path, "wb") as f:  # a file object: np.save(path) would append ".npy" itself
            np.save(f, obj, allow_pickle=self.allow_pickle)
        return {"dtype": str(obj.dtype), "shape": list(obj.shape)}

    def load(self, path, metadata=None, mmap_mode: str | None = None):
        import numpy as np

        if mmap_mode in ("r+", "w+"):
            raise ValueError(f"mmap_mode={mmap_mode!r} would write into the read-only cache; use 'r' or 'c' (copy-on-write)")
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=self.allow_pickle)


class CheckpointCacher(Cacher):
    """torch artifacts: an nn.Module (state_dict + class + init args: loading rebuilds it without
    naming the class), a training state {"model": module, "optimizer": opt, "epoch": 3, ...},
    tensors and dicts of tensors. A stage may also return the path of a checkpoint an external
    script wrote with orchestrator.checkpoint.save_checkpoint: the file is stored as it is.

    Loading options (on `load`, a Lazy input's `.load()`, or `orchestrator.load`): device= ("cpu",
    "cuda:0"; default: where it was saved, or the CPU when that device is missing), model=False for
    the raw state_dict, skip=("optimizer",) to drop parts. See orchestrator.checkpoint.load_checkpoint.
    """

    extension = ".pt"

    def save(self, obj, path):
        from .artifacts import checkpoint as ck

        payload = ck.payload_of(obj)
        import torch

        torch.save(payload, path)
        meta = {"kind": payload["kind"], "device": payload["device"], "weights_only": ck.is_plain(payload)}
        if payload["kind"] == "module":
            meta.update({"class": payload["model_class"], "init_args": payload["init_args"],
                         "extras": sorted(payload["extra"]) + (["optimizer"] if payload["optimizer"] is not None else [])})
            if payload["init_args"] is None:
                import warnings

                warnings.warn(f"checkpoint of {payload['model_class']} saved without init arguments, so it cannot be "
                              f"rebuilt at load: {payload['init_args_problem']}", RuntimeWarning, stacklevel=2)
        return meta

    def prepare(self, value, out):
        if isinstance(value, (str, os.PathLike)):
            return self._prepare_path(os.fspath(value), out)
        return super().prepare(value, out)

    def keep_in_memory(self, value):
        return not isinstance(value, (str, os.PathLike))

    def _prepare_path(self, src: str, out: OutputTarget):
        """A checkpoint file an external script wrote: stored as it is (moved if it is the stage's own)."""
        import shutil
        import zipfile

        src = os.path.abspath(src)
        if not os.path.exists(src):
            raise StageOutputError(f"stage {out.stage}: output {out.output!r} is the path {src}, which does not "
                                   f"exist; did the external script write the checkpoint there?")
        if not os.path.isfile(src):
            raise StageOutputError(f"stage {out.stage}: output {out.output!r} is the directory {src}; "
                                   f"CheckpointCacher stores one checkpoint file (use FileReferenceCacher for directories)")
        if not zipfile.is_zipfile(src):
            raise StageOutputError(f"stage {out.stage}: output {out.output!r}: {src} is not a torch checkpoint "
                                   f"(write it with orchestrator.checkpoint.save_checkpoint or torch.save)")
        from .artifacts.filerefs import is_under

        if is_under(src, out.staging):
            os.replace(src, out.path)
        else:
            shutil.copyfile(src, out.path)  # the original outside the stage's area is left alone
        return out.path, self.extension, {"kind": "file", "source": src, "weights_only": False}

    def load(self, path, metadata=None, *, device=None, model=True, optimizer=None, skip=()):
        from .artifacts.checkpoint import load_checkpoint

        # Objects in the store were written by this project's own stages: the same trust as
        # PickleCacher. Checkpoints of plain data are still read with torch's safe loader.
        weights_only = bool((metadata or {}).get("weights_only", False))
        return load_checkpoint(path, device=device, model=model, optimizer=optimizer, skip=skip,
                               weights_only=weights_only)

    @staticmethod
    def load_path(path, device=None, **options):
        """Load a checkpoint file written outside the store (e.g. by external/train.py)."""
        from .artifacts.checkpoint import load_checkpoint

        return load_checkpoint(path, device=device, **options)


class LightningCheckpointCacher(Cacher):
    """PyTorch Lightning checkpoints (`.ckpt`), loaded back as the right LightningModule subclass.

    The stage returns the path of a checkpoint an external script wrote (`trainer.save_checkpoint`,
    a `ModelCheckpoint` file): it is stored as it is, training state included. Or it returns a
    LightningModule: stored as a weights-only checkpoint (weights and saved hyperparameters).
    Loading imports the class recorded in the checkpoint by `integrations.lightning.RecordClass` and
    calls its `load_from_checkpoint`, so no code names the class (artifacts/lightning.py says which
    classes can be rebuilt, and the error when one cannot).

    Loading options (on `load`, a Lazy input's `.load()`, or `orchestrator.load`): device= ("cpu",
    "cuda:0"; default: where it was saved, or the CPU when that device is missing), hparams={...}
    to override or supply init arguments, cls=Module when the checkpoint records no class,
    strict=False for partial weights, training_state=True for {"model": module, "epoch": ...,
    "optimizer_states": ..., ...} minus the names in skip=(...), model=False for the raw checkpoint
    dict minus skip=(...) (e.g. skip=("optimizer_states", "loops")).
    """

    extension = ".ckpt"

    def prepare(self, value, out):
        from .artifacts import lightning as lt

        what = f"stage {out.stage}: output {out.output!r}"
        if isinstance(value, (str, os.PathLike)):
            path, meta = self._prepare_path(os.path.abspath(os.fspath(value)), out)
        elif hasattr(value, "load_from_checkpoint") and hasattr(value, "state_dict"):
            path, meta = out.path, lt.save_module(value, out.path)
        else:
            raise StageOutputError(f"{what}: LightningCheckpointCacher stores the path of a Lightning checkpoint "
                                   f"or a LightningModule, got {type(value).__name__}")
        problem = lt.storing_warning(meta, what)
        if problem:
            import warnings

            warnings.warn(problem, RuntimeWarning, stacklevel=2)
        return path, self.extension, meta

    def _prepare_path(self, src: str, out: OutputTarget):
        import shutil

        from .artifacts import lightning as lt
        from .artifacts.filerefs import is_under
        from .errors import CheckpointError

        what = f"stage {out.stage}: output {out.output!r}"
        if not os.path.isfile(src):
            raise StageOutputError(f"{what} is the path {src}, which is not a file; did the script write its "
                                   f"checkpoint there (trainer.save_checkpoint(path))?")
        try:
            meta = lt.describe(src)
        except (ValueError, CheckpointError) as e:
            raise StageOutputError(f"{what}: {src} is not a usable Lightning checkpoint: {e}") from None
        if is_under(src, out.staging):
            os.replace(src, out.path)
        else:  # a file elsewhere (a ModelCheckpoint directory) is copied and left alone
            shutil.copyfile(src, out.path)
        return out.path, {**meta, "source": src}

    def keep_in_memory(self, value):
        return not isinstance(value, (str, os.PathLike))

    def load(self, path, metadata=None, *, device=None, model=True, cls=None, hparams=None, strict=True,
             training_state=False, skip=()):
        from .artifacts.lightning import load

        return load(path, metadata, device=device, model=model, cls=cls, hparams=hparams, strict=strict,
                    training_state=training_state, skip=skip)


class FileReferenceCacher(Cacher):
    """The stage returns a path (file or directory) or a list of paths instead of an object.

    - Paths inside the stage's staging area (`record.get_path` / `record.get_dir`) are moved into
      the store (a rename, never a copy) and consumers receive the stored, read-only path.
    - Paths outside it are referenced, not copied: their content hash is recorded (a stat cache of
      size, mtime_ns and inode avoids re-hashing unchanged files), the stage's cache entry is valid
      only while they are unchanged (a changed file is a miss and the stage re-runs), and consumers
      receive the original path.
    A single path comes back as a str, a list as a list of str in the same order.
    `expect="file"` or `"dir"` turns a path of the other kind into an error.
    """

    def __init__(self, expect: str | None = None):
        if expect not in (None, "file", "dir"):
            raise StageDefinitionError(f"FileReferenceCacher(expect=...) takes 'file', 'dir' or None, got {expect!r}")
        self.expect = expect

    def config(self):
        return {"expect": self.expect} if self.expect else None

    def save(self, obj, path):  # pragma: no cover - prepare() replaces it
        raise NotImplementedError("FileReferenceCacher stores paths through prepare()")

    def keep_in_memory(self, value):
        return False  # consumers get the stored (or absolute referenced) paths, never the staging ones

    def prepare(self, value, out):
        from .artifacts.filerefs import prepare_paths

        return prepare_paths(value, out, self.expect)

    def load(self, path, metadata=None):
        from .artifacts.filerefs import load_paths

        return load_paths(path, metadata)

    def exported_paths(self, path, metadata):
        loaded = self.load(path, metadata)
        return [loaded] if isinstance(loaded, str) else list(loaded)


class Lazy:
    """Marks an input or output name as lazy.

    As an output: saved right away and dropped from memory. As an input: the stage receives a
    `LazyArtifact` handle (`.path`, `.load()`) and nothing is loaded unless it asks.
    """

    __slots__ = ("name",)

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise StageDefinitionError(f"Lazy() takes an artifact name, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Lazy({self.name!r})"


class LazyArtifact:
    """What a stage receives for a `Lazy(name)` input: the stored file, loaded only on demand."""

    __slots__ = ("name", "path", "_cacher", "_metadata")

    def __init__(self, name: str, path: str, cacher: Cacher | None, metadata: dict | None):
        self.name = name
        self.path = os.fspath(path)
        self._cacher = cacher
        self._metadata = metadata

    @property
    def metadata(self) -> dict | None:
        """What the cacher recorded when it saved the artifact (e.g. a model's class)."""
        return self._metadata

    def load(self, **kwargs):
        """Load with the artifact's cacher; keyword options go to it (e.g. device="cpu", mmap_mode="r")."""
        if self._cacher is None:
            raise StageDefinitionError(f"artifact {self.name!r} has no cacher to load it with")
        return self._cacher.load(self.path, self._metadata, **kwargs)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"LazyArtifact({self.name!r}, path={self.path!r})"


def as_cacher(c: Any, where: str) -> Cacher | None:
    """Accept a Cacher subclass, an instance, or None (memory only)."""
    if c is None:
        return None
    if isinstance(c, type) and issubclass(c, Cacher):
        return c()
    if isinstance(c, Cacher):
        return c
    raise StageDefinitionError(
        f"{where}: {c!r} is not a cacher; use a Cacher subclass such as PickleCacher, an instance of one, or None"
    )
