"""`python -m hypernet import-w2w`: the weights2weights collection as identity folders.

Input (snap-research/weights2weights; the layout facts are in hypernet.lora.w2w):

    FILES/all_weights.pt         one tensor [identities, 99648]: a flattened PEFT LoRA per row
    FILES/weight_dimensions.pt   dict PEFT key -> (numel, shape), in the order of a row's values
    IMAGES/<identity>/*.jpg ...  one folder of photos per identity; rows follow the folders in
                                 sorted order of their names (`order`: "sorted", Python's string
                                 order, or "natural", 2 before 10)

Output: the collection `python -m hypernet dataset` reads (its builder's input format):

    OUT/<identity>/lora.safetensors   kohya LoRA of layout sd15-w2w (rank 1, alpha 27), the
                                      row's factors copied; metadata `w2w_row` is the row
    OUT/<identity>/<photos>           hard links to the identity's photos (copies across file
                                      systems), with its embedding.safetensors/global.safetensors

The .pt files are pickles. They are read only by PyTorch's restricted loader (weights_only=True:
tensors and plain containers, nothing callable), which refuses any other file before running a
line of it, and memory-mapped, so the 26 GB of rows are read one row at a time. Each identity is
written into a hidden folder beside its final one and renamed when complete: an interrupted
import leaves no half identity, and a re-run skips the identities already written.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..common.files import link_or_copy
from ..common.messages import brief, one_line
from ..common.safetensors_header import read_header
from ..errors import HypernetError
from ..lora.layout import natural_key
from ..lora.lora_io import write_lora
from ..lora.presets import preset
from ..lora.w2w import KEY_QUOTE, W2W_PRESET, RowEntry, row_entries, row_to_lora
from .identity_folders import NOT_LORAS, PHOTO_SUFFIXES

WEIGHTS_FILE = "all_weights.pt"
DIMENSIONS_FILE = "weight_dimensions.pt"
LORA_FILE = "lora.safetensors"
ROW_KEY = "w2w_row"
ORDERS = ("sorted", "natural")
_PARTIAL = ".partial-"


@dataclass
class ImportResult:
    out: Path
    identities: list[str]
    written: int
    reused: int

    def summary(self) -> str:
        return (f"{len(self.identities)} identities ({self.written} written, {self.reused} already there) "
                f"in {self.out}")


def load_restricted(path: Path) -> object:
    """A .pt file through PyTorch's restricted unpickler, memory-mapped; anything it refuses is a HypernetError."""
    if not path.is_file():
        raise HypernetError(f"{path} does not exist; give the weights2weights files folder (it holds {WEIGHTS_FILE})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        reason = one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 120)
        raise HypernetError(f"{path} is not a tensor file PyTorch's restricted loader accepts, so it was refused "
                            f"unread ({reason}); use the files as weights2weights publishes them") from None


def read_dimensions(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """weight_dimensions.pt as (key, shape) in file order, each numel checked against its shape."""
    data = load_restricted(path)
    if not isinstance(data, dict) or not data:
        raise HypernetError(f"{path} holds {type(data).__name__}, not weights2weights' dict key -> (numel, shape)")
    out = []
    for key, value in data.items():
        try:
            numel, shape = value
            numel = int(numel[0]) if isinstance(numel, (tuple, list, torch.Size)) else int(numel)
            shape = tuple(int(d) for d in shape)
        except (TypeError, ValueError, IndexError):
            raise HypernetError(f"{path}: the entry of {brief(key, KEY_QUOTE)} is {brief(value)}, "
                                "not (numel, shape)") from None
        if not isinstance(key, str) or numel != math.prod(shape) or numel < 1:
            raise HypernetError(f"{path}: {brief(key, KEY_QUOTE)} has numel {numel} but shape {list(shape)}; "
                                "the file is damaged")
        out.append((key, shape))
    return out


def open_rows(path: Path, width: int) -> torch.Tensor:
    """all_weights.pt, memory-mapped: a float tensor [identities, width]."""
    rows = load_restricted(path)
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or not rows.dtype.is_floating_point:
        what = f"a {rows.dim()}-d {rows.dtype} tensor" if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise HypernetError(f"{path} holds {what}, not the float tensor [identities, values] of weights2weights")
    if rows.shape[1] != width:
        raise HypernetError(f"{path} has rows of {rows.shape[1]:,} values but {DIMENSIONS_FILE} describes {width:,}")
    return rows


def identity_folders(images: Path, order: str = "sorted") -> list[Path]:
    """The identity folders under `images` in the order of the rows."""
    if order not in ORDERS:
        raise HypernetError(f"order must be one of {ORDERS}, not {brief(order)}")
    if not images.is_dir():
        raise HypernetError(f"images folder {images} does not exist")
    folders = [p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(folders, key=(lambda p: natural_key(p.name)) if order == "natural" else (lambda p: p.name))


def _missing_numbers(folders: list[Path], rows: int) -> str:
    """For numbered folders (as weights2weights names them), the first numbers with no folder."""
    names = {p.name for p in folders}
    if not all(name.isdigit() for name in names):
        return ""
    missing = [str(i) for i in range(rows) if str(i) not in names][:3]
    return f"; no folder for identity {', '.join(missing)}" if missing else ""


def _identity_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    carried = [p for p in files if p.suffix.lower() in PHOTO_SUFFIXES or p.name in NOT_LORAS]
    if not carried:
        raise HypernetError(f"identity folder {folder} holds no photos (nor embedding.safetensors)")
    return carried


def _written_row(folder: Path) -> str | None:
    lora = folder / LORA_FILE
    if not lora.is_file():
        return None
    return (read_header(lora).get("__metadata__") or {}).get(ROW_KEY)


def _write_identity(out: Path, folder: Path, index: int, rows: torch.Tensor, entries: list[RowEntry],
                    link: bool) -> bool:
    """Write one identity atomically; False when an earlier run already wrote it."""
    final = out / folder.name
    if final.exists():
        if _written_row(final) != str(index):
            raise HypernetError(f"{final} exists but is not row {index} of this import; import into an empty "
                                "folder or the folder of an earlier import of the same files")
        return False
    files = _identity_files(folder)
    weights = row_to_lora(rows[index], entries)
    partial = out / f"{_PARTIAL}{folder.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        write_lora(partial / LORA_FILE, weights, base_model="sd15", metadata={ROW_KEY: str(index),
                                                                               "w2w_identity": folder.name})
        for path in files:
            link_or_copy(path, partial / path.name, link)
        os.rename(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return True


def import_w2w(weights_dir: str | os.PathLike, images_dir: str | os.PathLike, out: str | os.PathLike, *,
               order: str = "sorted", link: bool = True, progress: bool = True,
               layout: str = W2W_PRESET) -> ImportResult:
    """Write one identity folder per row of weights2weights' all_weights.pt under `out`. `layout` is
    the preset the rows follow: sd15-w2w for the published files (tiny-sd15-w2w in tests)."""
    weights_dir, out = Path(weights_dir), Path(out)
    entries = row_entries(read_dimensions(weights_dir / DIMENSIONS_FILE), preset(layout), layout)
    rows = open_rows(weights_dir / WEIGHTS_FILE, entries[-1].stop)
    folders = identity_folders(Path(images_dir), order)
    if len(folders) != rows.shape[0]:
        raise HypernetError(f"{weights_dir / WEIGHTS_FILE} has {rows.shape[0]:,} rows but {images_dir} has "
                            f"{len(folders):,} identity folders{_missing_numbers(folders, rows.shape[0])}; "
                            "each row needs its identity's folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{_PARTIAL}*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    written = 0
    for index, folder in enumerate(tqdm(folders, desc="w2w identities", unit="identity", disable=not progress)):
        written += _write_identity(out, folder, index, rows, entries, link)
    (out / "w2w_import.json").write_text(json.dumps({
        "source": str(weights_dir), "images": str(images_dir), "identities": len(folders), "order": order,
        "layout": layout, "values": entries[-1].stop}, indent=1))
    return ImportResult(out, [f.name for f in folders], written, len(folders) - written)
