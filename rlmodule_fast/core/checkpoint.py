"""Checkpoint files that never execute code on load, and loads bounded by what is loaded.

A module's checkpoint directory holds:
- ``module_state.safetensors``: the tensors of ``get_state()`` (safetensors: raw bytes and a
  JSON header, no pickle);
- ``class_and_ctor_args.json``: the class name and the constructor arguments as plain data
  (spaces via ``core.spaces``, model config as JSON);
- ``metadata.json``: class, library/torch versions, checkpoint format version, the state file's
  SHA-256.

A multi-module checkpoint holds the two JSON files and one sub-directory per module id.

**Class names are looked up, never imported.** A checkpoint (or a spec dict) can only name a
class that is already known to this process:

1. every ``RLModule`` and ``Catalog`` subclass registers itself when it is defined
   (``__init_subclass__`` calls :func:`register_class`), so importing the module that defines a
   class is what allows checkpoints to name it;
2. classes passed explicitly by the caller: ``from_checkpoint(path, module_class=Cls)`` or
   ``trusted_classes=[Cls, ...]`` (or ``{"old.module:OldName": Cls}`` for a renamed class);
3. classes that an *installed* distribution declares under the ``rlmodule_fast.modules``
   entry-point group (``my_pkg.modules:MyModule`` as the entry point's value): loading such an
   entry point imports that package's module, which is the trust decision its installer made.

A name that none of these knows is refused with a ValueError that names the file, the class and
these three ways to allow it. Nothing named by a file is ever passed to ``import``.

**Bounds.** JSON files are read up to :data:`MAX_JSON_BYTES` (``metadata.json``:
:data:`MAX_METADATA_BYTES`), duplicate keys and NaN/Infinity literals are refused; the
safetensors header is parsed here (length field, at most :data:`MAX_STATE_HEADER_BYTES`, every
tensor's byte size = shape x dtype and the tensors exactly tiling the data region) before
anything is allocated; ``RLModule.from_checkpoint`` then builds the module on torch's ``meta``
device (no memory) and compares it with the header (:func:`check_state_fits`) before building
it for real. Every problem with a checkpoint is a ValueError or FileNotFoundError naming the file.

Saving (:func:`replace_dir`) writes into a fresh directory beside the target and renames it into
place, so a link already in the target is never written through.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import secrets
import shutil
import stat
import struct
import sys
import threading
import weakref
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch

CHECKPOINT_VERSION = "1"
STATE_FILE_NAME = "module_state.safetensors"
METADATA_FILE_NAME = "metadata.json"
CLASS_AND_CTOR_ARGS_FILE_NAME = "class_and_ctor_args.json"

#: Entry-point group through which installed packages declare classes checkpoints may name.
ENTRY_POINT_GROUP = "rlmodule_fast.modules"

#: Largest ``class_and_ctor_args.json`` read (and written).
MAX_JSON_BYTES = 16 << 20
#: Largest ``metadata.json`` read.
MAX_METADATA_BYTES = 1 << 20
#: Largest safetensors JSON header read (safetensors itself allows 100 MB).
MAX_STATE_HEADER_BYTES = 16 << 20
#: Longest class name a file may give.
MAX_CLASS_NAME_CHARS = 1024
#: Deepest nesting of multi-module checkpoints (a MultiRLModule holding MultiRLModules ...).
MAX_NESTING = 4
#: Elements a module built from a checkpoint may hold beyond what its state file provides
#: (tensors the state file leaves out, e.g. a value head when loading an inference-only state).
MISSING_STATE_SLACK_ELEMENTS = 1 << 16

ClassSpec = Union[None, Iterable[type], Mapping[str, type]]


# =============================================================================================
# class registry


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_registry_lock = threading.Lock()
_REGISTRY: dict[str, list] = {}  # class path -> weak references, oldest first


def register_class(cls: type) -> type:
    """Allow checkpoints to name ``cls`` (by ``module:QualName``). Called by
    ``RLModule.__init_subclass__`` and ``Catalog.__init_subclass__``; usable as a decorator.
    The registry holds weak references: a class that is gone is no longer resolvable."""
    if not isinstance(cls, type):
        raise TypeError(f"register_class: expected a class, got {cls!r}")
    key = class_path(cls)
    with _registry_lock:
        refs = [r for r in _REGISTRY.get(key, ()) if r() is not None and r() is not cls]
        refs.append(weakref.ref(cls))
        _REGISTRY[key] = refs
    return cls


def registered_classes() -> dict[str, type]:
    """``{class path: class}`` of every registered class still alive (the newest per path)."""
    out = {}
    with _registry_lock:
        items = list(_REGISTRY.items())
    for key, refs in items:
        for r in reversed(refs):
            c = r()
            if c is not None:
                out[key] = c
                break
    return out


def _registered(key: str) -> Optional[type]:
    with _registry_lock:
        refs = list(_REGISTRY.get(key, ()))
    for r in reversed(refs):
        c = r()
        if c is not None:
            return c
    return None


def _is_registered(cls: type) -> bool:
    return _registered(class_path(cls)) is cls


def trusted_map(trusted_classes: ClassSpec) -> dict[str, type]:
    """Normalise ``trusted_classes`` (classes, or ``{name: class}``) to ``{name: class}``."""
    if trusted_classes is None:
        return {}
    if isinstance(trusted_classes, Mapping):
        items = list(trusted_classes.items())
    elif isinstance(trusted_classes, type) or isinstance(trusted_classes, (str, bytes)):
        raise TypeError("trusted_classes: expected an iterable of classes or a {name: class} mapping, "
                        f"got {trusted_classes!r}")
    else:
        items = [(None, c) for c in trusted_classes]
    out: dict[str, type] = {}
    for name, c in items:
        if not isinstance(c, type):
            raise TypeError(f"trusted_classes: expected classes, got {c!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"trusted_classes: names must be strings, got {name!r}")
        for key in ([name] if name is not None else []) + [class_path(c)]:
            for mod, qual in _candidate_keys(key):
                out[f"{mod}:{qual}"] = c
    return out


def _candidate_keys(name: str) -> list[tuple[str, str]]:
    """(module, qualname) splits a name can mean: ``a.b:C.D`` -> one; ``a.b.C`` -> every split."""
    if ":" in name:
        mod, _, qual = name.partition(":")
        return [(mod, qual)] if mod and qual else []
    parts = name.split(".")
    if any(not p for p in parts):
        return []
    return [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]


def _walk_loaded(mod: str, qual: str) -> Any:
    """``sys.modules[mod].<qual>`` by plain ``vars()`` look-ups (no import, no ``__getattr__``)."""
    obj: Any = sys.modules.get(mod)
    if obj is None:
        return None
    for part in qual.split("."):
        try:
            d = vars(obj)
        except TypeError:
            return None
        obj = d.get(part)
        if obj is None:
            return None
    return obj


def _from_entry_points(keys: list[tuple[str, str]], *, source: str) -> Any:
    """The object an installed distribution declares under ENTRY_POINT_GROUP as one of ``keys``.

    Loading it imports that distribution's module: installing a package that declares an entry
    point in this group is the user's decision to trust it (see the module docstring)."""
    wanted = {f"{m}:{q}" for m, q in keys}
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # noqa: BLE001 -- broken metadata of some other package: no entry points
        return None
    for ep in eps:
        try:
            value = f"{ep.module}:{ep.attr}" if ep.attr else None
        except Exception:  # noqa: BLE001
            continue
        if value in wanted:
            try:
                return ep.load()
            except Exception as e:  # noqa: BLE001 -- an installed package failing to import
                raise ValueError(f"{source}: entry point {ep.name!r} = {ep.value!r} of group "
                                 f"{ENTRY_POINT_GROUP!r} failed to load: {type(e).__name__}: {e}") from e
    return None


def resolve_class(name: Any, base: type, *, source: str, trusted: ClassSpec = None) -> type:
    """The class ``name`` (``module:QualName`` or ``module.QualName``) denotes, if it is known
    (registered, in ``trusted``, or declared by an installed entry point) and subclasses ``base``.

    Never imports a module a file names. ``source`` names the file (or field) for errors.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: class name must be a non-empty string, got {name!r:.200}")
    if len(name) > MAX_CLASS_NAME_CHARS or not name.isprintable():
        raise ValueError(f"{source}: class name {name[:80]!r}... is not a class name (too long or unprintable)")
    trusted_m = trusted if isinstance(trusted, dict) else trusted_map(trusted)
    keys = _candidate_keys(name)
    base_key = class_path(base)
    obj: Any = None
    for mod, qual in keys:
        key = f"{mod}:{qual}"
        obj = trusted_m.get(key) or (base if key == base_key else None) or _registered(key)
        if obj is not None:
            break
    if obj is None:
        # an alias of a known class through a module that is already loaded ("rlmodule_fast:RLModule")
        for mod, qual in keys:
            cand = _walk_loaded(mod, qual)
            if isinstance(cand, type) and (cand is base or _is_registered(cand) or cand in trusted_m.values()):
                obj = cand
                break
    if obj is None:
        obj = _from_entry_points(keys, source=source)
    if obj is None:
        raise ValueError(
            f"{source}: class {name!r} is not a known {base.__name__} class; refusing to load it (a checkpoint "
            f"can only name classes this process already knows: nothing it names is imported). To allow it: "
            f"import the module that defines it before loading ({base.__name__} subclasses register themselves "
            f"when defined), pass it explicitly (from_checkpoint(path, module_class=Cls) or trusted_classes=[Cls]), "
            f"or install a package that declares it under the {ENTRY_POINT_GROUP!r} entry-point group")
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ValueError(f"{source}: {name!r} is not a subclass of {base.__name__}; refusing to load it")
    return obj


# =============================================================================================
# bounded reads


def _open_regular(path: pathlib.Path) -> int:
    """An fd on ``path`` if it is a regular file (FIFOs and devices are refused without blocking)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint file missing: {path}") from None
    except IsADirectoryError:
        raise FileNotFoundError(f"checkpoint file missing (a directory is in its place): {path}") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot open checkpoint file: {e}") from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileNotFoundError(f"checkpoint file missing (a directory is in its place): {path}")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pread_exact(fd: int, n: int, offset: int, path: pathlib.Path) -> bytes:
    chunks, got = [], 0
    while got < n:
        try:
            b = os.pread(fd, min(n - got, 1 << 20), offset + got)
        except OSError as e:
            raise ValueError(f"{path}: cannot read checkpoint file: {e}") from e
        if not b:
            raise ValueError(f"{path}: truncated (expected {n} bytes at offset {offset}, got {got})")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def read_bytes(path: pathlib.Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``; ValueError if it holds more than ``max_bytes``."""
    path = pathlib.Path(path)
    fd = _open_regular(path)
    try:
        if os.fstat(fd).st_size > max_bytes:
            raise ValueError(f"{path}: larger than {max_bytes} bytes; refusing to read it")
        chunks, got = [], 0
        while got <= max_bytes:  # st_size can lie (/proc files): read at most max_bytes + 1
            try:
                b = os.read(fd, min(max_bytes + 1 - got, 1 << 20))
            except OSError as e:
                raise ValueError(f"{path}: cannot read checkpoint file: {e}") from e
            if not b:
                break
            chunks.append(b)
            got += len(b)
        if got > max_bytes:
            raise ValueError(f"{path}: larger than {max_bytes} bytes; refusing to read it")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _no_duplicate_keys(pairs: list) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r:.100}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (non-finite numbers are stored as strings)")


def loads_json(text: Union[str, bytes], *, source: str) -> Any:
    """Strict JSON: duplicate keys, NaN/Infinity literals, over-deep nesting and over-long
    integers are a ValueError naming ``source``."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except (ValueError, RecursionError, MemoryError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise ValueError(f"{source}: not valid JSON (corrupt or truncated checkpoint file): "
                         f"{type(e).__name__}: {str(e)[:300]}") from None


def read_json(path: pathlib.Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from ``path`` (bounded, strict); errors name the file."""
    path = pathlib.Path(path)
    data = loads_json(read_bytes(path, max_bytes), source=str(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_json(path: pathlib.Path, data: Mapping[str, Any]) -> None:
    try:
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot store as JSON (only plain data is stored): {e}") from e
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"{path}: the JSON would be {len(text)} bytes, more than a checkpoint may hold "
                         f"({MAX_JSON_BYTES}); loading would refuse it")
    pathlib.Path(path).write_text(text)


# =============================================================================================
# metadata and checksums


def metadata(class_: type, *, kind: str = "module") -> dict:
    from .. import __version__

    return {
        "checkpoint_version": CHECKPOINT_VERSION,
        "kind": kind,
        "class": class_path(class_),
        "rlmodule_fast_version": __version__,
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "state_file": STATE_FILE_NAME,
        "class_and_ctor_args_file": CLASS_AND_CTOR_ARGS_FILE_NAME,
    }


def check_metadata(path: pathlib.Path) -> dict:
    f = pathlib.Path(path) / METADATA_FILE_NAME
    meta = read_json(f, MAX_METADATA_BYTES)
    version = meta.get("checkpoint_version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{f}: checkpoint_version {version!r:.100} is not supported (expected {CHECKPOINT_VERSION!r})")
    if meta.get("kind", "module") not in ("module", "multi"):
        raise ValueError(f"{f}: kind {meta.get('kind')!r:.100} is not 'module' or 'multi'")
    sha = meta.get("state_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise ValueError(f"{f}: state_sha256 must be a hex SHA-256, got {sha!r:.100}")
    return meta


def file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: pathlib.Path, expected: Optional[str], meta_file: pathlib.Path) -> None:
    """Compare ``path``'s SHA-256 with the one recorded in ``meta_file`` (safetensors itself has
    no checksum: a flipped bit in the tensor bytes would load silently)."""
    if expected is None:
        return
    fd = _open_regular(pathlib.Path(path))
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise ValueError(f"{path}: cannot read checkpoint file: {e}") from e
    finally:
        os.close(fd)
    if not isinstance(expected, str) or h.hexdigest() != expected:
        raise ValueError(f"{path}: checksum mismatch with {meta_file} (corrupt or modified state file)")


# =============================================================================================
# the safetensors header

#: safetensors dtype -> (bytes per element, kind: "f" float, "i" signed, "u" unsigned, "b" bool)
SAFETENSORS_DTYPES = {
    "F64": (8, "f"), "F32": (4, "f"), "F16": (2, "f"), "BF16": (2, "f"), "F8_E4M3": (1, "f"), "F8_E5M2": (1, "f"),
    "I64": (8, "i"), "I32": (4, "i"), "I16": (2, "i"), "I8": (1, "i"),
    "U64": (8, "u"), "U32": (4, "u"), "U16": (2, "u"), "U8": (1, "u"), "BOOL": (1, "b"),
}
_MAX_RANK = 64


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple
    start: int
    end: int

    @property
    def is_float(self) -> bool:
        return SAFETENSORS_DTYPES[self.dtype][1] == "f"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class StateHeader:
    """The validated header of a safetensors file: what loading it will allocate."""

    path: pathlib.Path
    tensors: dict
    data_bytes: int

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors.values())


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_state_header(path: pathlib.Path) -> StateHeader:
    """Parse and check the safetensors header of ``path`` without reading the tensor data.

    Checks: the 8-byte little-endian header length (1 .. MAX_STATE_HEADER_BYTES, within the
    file), strict JSON, known dtypes, shapes of non-negative ints, each tensor's byte size
    (prod(shape) x dtype size) equal to its ``data_offsets`` span, and the tensors tiling the
    data region exactly (no gap, no overlap, nothing past or short of the end of the file).
    """
    path = pathlib.Path(path)
    fd = _open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size < 8:
            raise ValueError(f"{path}: not a valid safetensors state file ({size} bytes; truncated or empty)")
        (n,) = struct.unpack("<Q", _pread_exact(fd, 8, 0, path))
        if n < 2 or n > MAX_STATE_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"{path}: not a valid safetensors state file (header length {n} with a file of "
                             f"{size} bytes; limit {MAX_STATE_HEADER_BYTES})")
        raw = _pread_exact(fd, n, 8, path)
    finally:
        os.close(fd)
    hdr = loads_json(raw, source=f"{path} (safetensors header)")
    if not isinstance(hdr, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in hdr.items():
        if name == "__metadata__":
            if entry is not None and not (isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                raise ValueError(f"{path}: safetensors __metadata__ must map strings to strings")
            continue
        where = f"{path}: tensor {name!r:.100}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}: expected {{dtype, shape, data_offsets}}, got {entry!r:.200}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{where}: unknown dtype {dtype!r:.50}")
        if not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(_int(s) and s >= 0 for s in shape):
            raise ValueError(f"{where}: shape must be a list of at most {_MAX_RANK} non-negative ints, "
                             f"got {shape!r:.200}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{where}: data_offsets must be [start, end] with 0 <= start <= end, got {offsets!r:.200}")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype][0]
        if nbytes != offsets[1] - offsets[0]:
            raise ValueError(f"{where}: shape {shape} x {dtype} is {nbytes} bytes but its data_offsets span "
                             f"{offsets[1] - offsets[0]}")
        tensors[name] = TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])
    data_bytes = size - 8 - n
    end = 0
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start != end:
            raise ValueError(f"{path}: tensor data {'overlaps' if t.start < end else 'has a gap'} at byte {t.start} "
                             f"(tensors must tile the data region)")
        end = t.end
    if end != data_bytes:
        raise ValueError(f"{path}: the tensors cover {end} bytes but the data region holds {data_bytes} "
                         f"(truncated or padded state file)")
    return StateHeader(path, tensors, data_bytes)


def _flat_tensors(state: Any, prefix: str = "", depth: int = 0) -> dict:
    out: dict = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state
    elif isinstance(state, Mapping) and depth < 8:
        for k, v in state.items():
            out.update(_flat_tensors(v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
    return out


def check_state_fits(own_state: Mapping[str, Any], header: StateHeader, *, described_by: pathlib.Path) -> None:
    """Refuse a module (built on the meta device from ``described_by``) that the state file cannot
    fill: a tensor whose shape differs from the file's, a float/non-float mismatch, or more than
    MISSING_STATE_SLACK_ELEMENTS + the file's own element count in tensors the file lacks.

    Passing this bounds the real build by the size of the state file; key-by-key checks (missing,
    unexpected) are ``set_state``'s.
    """
    own = _flat_tensors(own_state)
    missing_numel, missing = 0, []
    where = f"{header.path}: does not match the module {described_by} describes"
    for k, t in own.items():
        info = header.tensors.get(k)
        if info is None:
            missing_numel += t.numel()
            missing.append(k)
            continue
        if tuple(t.shape) != info.shape:
            raise ValueError(f"{where}: state[{k!r}]: expected shape {tuple(t.shape)}, got {info.shape}")
        if t.dtype.is_floating_point != info.is_float:
            raise ValueError(f"{where}: state[{k!r}]: expected dtype {t.dtype}, got {info.dtype}")
    if missing_numel > header.numel + MISSING_STATE_SLACK_ELEMENTS:
        raise ValueError(f"{where}: the module would hold {missing_numel} elements in tensors the state file lacks "
                         f"({sorted(missing)[:5]}...), more than the file's own {header.numel}; refusing to build it")


def is_dir(path: pathlib.Path) -> bool:
    """``path.is_dir()``, with the OSErrors it lets through (name too long, ...) as ValueError."""
    try:
        return pathlib.Path(path).is_dir()
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot access checkpoint directory: {e}") from None


def visit_dir(path: pathlib.Path, visited: set) -> None:
    """Refuse a directory seen before in one load (a link loop, or one sub-directory shared by
    several module ids): the work of a load stays proportional to the directories on disk."""
    try:
        st = path.stat()
    except OSError as e:
        raise FileNotFoundError(f"checkpoint directory missing: {path} ({e})") from e
    key = (st.st_dev, st.st_ino)
    if key in visited:
        raise ValueError(f"{path}: this directory appears twice in one checkpoint (a link loop or a shared "
                         "sub-directory); refusing it")
    visited.add(key)


# =============================================================================================
# tensors


def save_tensors(path: pathlib.Path, state: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v)
        tensors[k] = v.detach().to("cpu").contiguous().clone()
    save_file(tensors, str(path))


def load_tensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (header checked first, so the allocation is the file's
    size); errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_state_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as e:
        raise ValueError(f"{path}: not a valid safetensors state file (corrupt, truncated or wrong format): {e}") from e


# =============================================================================================
# saving: a fresh directory renamed into place


def as_dir(path: Optional[Union[os.PathLike, str]]) -> pathlib.Path:
    if path is None:
        import tempfile

        return pathlib.Path(tempfile.mkdtemp(prefix="rlmodule_fast_ckpt_"))
    return pathlib.Path(path)


_CHECKPOINT_NAMES = (METADATA_FILE_NAME, CLASS_AND_CTOR_ARGS_FILE_NAME, STATE_FILE_NAME)


def _fresh_name(parent: pathlib.Path, stem: str, tag: str) -> pathlib.Path:
    while True:
        p = parent / f".{stem[:64]}.{tag}-{secrets.token_hex(6)}"
        if not os.path.lexists(p):
            return p


def _fresh_dir(parent: pathlib.Path, stem: str) -> pathlib.Path:
    while True:
        p = _fresh_name(parent, stem, "tmp")
        try:
            os.mkdir(p, 0o777)  # the umask applies, as for any directory the user creates
            return p
        except FileExistsError:
            continue


def _remove(p: pathlib.Path) -> None:
    """Remove ``p`` without following links (a link is unlinked, a directory removed)."""
    if os.path.islink(p) or not os.path.isdir(p):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(p, ignore_errors=True)


def replace_dir(target: Union[os.PathLike, str], write: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Run ``write(tmp)`` on a fresh directory beside ``target`` and move the result into place.

    - ``target`` missing: the fresh directory is renamed to it;
    - ``target`` an empty directory: the written entries are renamed into it (metadata last);
    - ``target`` a checkpoint directory (holds one of the checkpoint files) or a link: it is
      renamed aside, the new directory renamed in, then the old one (or the link itself, never
      what it points to) deleted;
    - anything else (a file, a non-empty directory that is not a checkpoint): FileExistsError /
      ValueError, nothing written.

    No file is ever opened inside an existing directory, so a link already there is never
    written through.
    """
    target = pathlib.Path(os.path.abspath(target))  # the last component is not resolved: it may be a link
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    kind = "missing"
    if os.path.lexists(target):
        st = os.lstat(target)
        if stat.S_ISLNK(st.st_mode):
            kind = "replace"
        elif stat.S_ISDIR(st.st_mode):
            names = os.listdir(target)
            if not names:
                kind = "fill"
            elif any(n in _CHECKPOINT_NAMES for n in names):
                kind = "replace"
            else:
                raise ValueError(f"{target}: exists and is not a checkpoint directory (holds e.g. "
                                 f"{sorted(names)[:3]}); refusing to replace it")
        else:
            raise FileExistsError(f"{target}: exists and is not a directory")
    tmp = _fresh_dir(parent, target.name)
    try:
        write(tmp)
        if kind == "missing":
            os.rename(tmp, target)
        elif kind == "fill":
            entries = sorted(os.listdir(tmp), key=lambda n: (n == METADATA_FILE_NAME, n))
            for name in entries:
                os.rename(tmp / name, target / name)
            os.rmdir(tmp)
        else:
            aside = _fresh_name(parent, target.name, "old")
            os.rename(target, aside)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(aside, target)
                raise
            _remove(aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
