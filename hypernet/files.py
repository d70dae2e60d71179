"""Writing files so that nothing is ever half-written or silently overwritten."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def _temp_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _write(tensors: dict[str, torch.Tensor], tmp: Path, metadata: dict[str, str] | None) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    # The temporary file is private (0600); a saved LoRA or checkpoint gets the usual mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write to a temporary file beside `path`, then rename over it: readers see old or new, never half."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        _write(tensors, tmp, metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors_new(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> bool:
    """Like save_safetensors_atomic, but only if `path` does not exist yet; returns False if it did."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        _write(tensors, tmp, metadata)
        try:
            os.link(tmp, path)  # atomic, and fails instead of replacing an existing file
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)
