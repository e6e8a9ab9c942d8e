"""Checkpoint files that never execute code on load.

A module's checkpoint directory holds:
- ``module_state.safetensors``: the tensors of ``get_state()`` (safetensors: raw bytes and a
  JSON header, no pickle);
- ``class_and_ctor_args.json``: the class path and the constructor arguments as plain data
  (spaces via ``core.spaces``, model config as JSON);
- ``metadata.json``: class, library/torch versions, checkpoint format version.

A multi-module checkpoint holds the two JSON files and one sub-directory per module id.
Loading resolves the class path by import and only accepts a subclass of the expected base
(an ``RLModule``), so a checkpoint naming e.g. ``os.system`` is refused; every file problem is
a ValueError / FileNotFoundError that names the file.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib
from typing import Any, Mapping, Optional

import torch

CHECKPOINT_VERSION = "1"
STATE_FILE_NAME = "module_state.safetensors"
METADATA_FILE_NAME = "metadata.json"
CLASS_AND_CTOR_ARGS_FILE_NAME = "class_and_ctor_args.json"


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(path: str, base: type, *, source: str) -> type:
    """Import ``module:QualName`` (or ``module.QualName``) and check it subclasses ``base``.

    Only already-installed code is imported; nothing from the checkpoint is executed.
    ``source`` names the file the path came from, for error messages.
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"{source}: class path must be a non-empty string, got {path!r}")
    if ":" in path:
        mod_name, qual = path.split(":", 1)
    else:
        mod_name, _, qual = path.rpartition(".")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in qual.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"{source}: cannot resolve class {path!r}: {e}") from e
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ValueError(f"{source}: {path!r} is not a subclass of {base.__name__}; refusing to load it")
    return obj


def write_json(path: pathlib.Path, data: Mapping[str, Any]) -> None:
    try:
        text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot store as JSON (only plain data is stored): {e}") from e
    path.write_text(text)


def read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON (corrupt or truncated checkpoint file): {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def metadata(class_: type, *, kind: str = "module") -> dict:
    import sys

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
    meta = read_json(path / METADATA_FILE_NAME)
    version = meta.get("checkpoint_version")
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"{path / METADATA_FILE_NAME}: checkpoint_version {version!r} is not supported (expected {CHECKPOINT_VERSION!r})")
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
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    if not isinstance(expected, str) or file_sha256(path) != expected:
        raise ValueError(f"{path}: checksum mismatch with {meta_file} (corrupt or modified state file)")


def save_tensors(path: pathlib.Path, state: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            v = torch.as_tensor(v)
        tensors[k] = v.detach().to("cpu").contiguous().clone()
    save_file(tensors, str(path))


def load_tensors(path: pathlib.Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: not a valid safetensors state file (corrupt, truncated or wrong format): {e}") from e


def as_dir(path: Optional[os.PathLike | str]) -> pathlib.Path:
    if path is None:
        import tempfile

        return pathlib.Path(tempfile.mkdtemp(prefix="rlmodule_fast_ckpt_"))
    return pathlib.Path(path)
