"""Writing files so that nothing is ever half-written or silently overwritten."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import HypernetError


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


def link_or_copy(src: Path, dest: Path, link: bool = True) -> None:
    """A hard link to `src` at `dest` (no second copy of a photo), or a copy where links cannot be made."""
    if link:
        try:
            os.link(src, dest)
            return
        except OSError:  # another file system, or links not allowed
            pass
    shutil.copy2(src, dest)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold an object; anything else is the user's error, with the file named."""
    try:
        data = json.loads(Path(path).read_text())
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise HypernetError(f"{path} is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise HypernetError(f"{path} must hold a JSON object of {what}")
    return data


# What a save prefix may hold: any letter or digit (names in every script), space, - _ . and /
# between sub-folders. Everything else is refused rather than cleaned up: a prefix that silently
# became another name would write where the user does not look.
_PART_BYTES, _PREFIX_BYTES = 200, 400  # file names are at most 255 bytes; the counter adds 19
_PREFIX_RULE = ("use letters, digits, spaces and - _ . with / between sub-folders, "
                "like 'hypernet/person'")


def check_filename_prefix(prefix: str) -> str:
    """`prefix` if it names a file (and sub-folders) safely inside the save folder; otherwise a
    HypernetError saying what is wrong and what is allowed. Refuses empty prefixes, absolute
    paths, '..' and hidden ('.'-first) names, backslashes, control characters and overlong names."""
    if not isinstance(prefix, str):
        raise HypernetError(f"the file name prefix must be text; {_PREFIX_RULE}")
    shown = repr(prefix if len(prefix) <= 40 else prefix[:40] + "...")
    problem = _prefix_problem(prefix)
    if problem:
        raise HypernetError(f"file name prefix {shown} {problem}: {_PREFIX_RULE}")
    return prefix


def _prefix_problem(prefix: str) -> str | None:
    if not prefix:
        return "is empty"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in prefix):
        return "contains a control character"
    if "\\" in prefix:
        return "contains a backslash"
    if prefix.startswith("/"):
        return "is an absolute path (it must stay inside the save folder)"
    if len(prefix.encode()) > _PREFIX_BYTES:
        return f"is longer than {_PREFIX_BYTES} bytes"
    for part in prefix.split("/"):
        if part == "..":
            return "goes up a folder with '..' (it must stay inside the save folder)"
        if not part:
            return "has an empty folder or file name (a '/' at the start or end, or '//')"
        if part.startswith("."):
            return f"has a name starting with '.' ({part[:40]!r}), which would be hidden"
        if len(part.encode()) > _PART_BYTES:
            return f"has a name longer than {_PART_BYTES} bytes"
        bad = next((ch for ch in part if not (ch.isalnum() or ch in " -_.")), None)
        if bad is not None:
            return f"contains {bad!r}"
    return None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Like save_safetensors_atomic, for any bytes (an exported ONNX model, say)."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        tmp.write_bytes(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Like save_safetensors_atomic, for a text file (lists, tables)."""
    write_bytes_atomic(path, text.encode("utf-8"))
