"""The header of a .safetensors file, read and checked by us before safetensors touches the file.

A LoRA comes from strangers. Everything the header claims (its own length, each tensor's
dtype, shape and byte range) is checked against the file size and against itself here, so a
truncated, lying or hostile file is a HypernetError naming the file, after reading at most
8 + header-length bytes, and safetensors only ever sees a consistent header.
"""
from __future__ import annotations

import json
import math
import struct
from collections import Counter
from pathlib import Path

from ..errors import HypernetError

MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
MAX_DIMS = 8  # LoRA factors have 2 or 4; more is not a tensor any LoRA format writes
# Bytes per value of every dtype safetensors defines (F8/F6/F4: fractions of a byte).
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
              "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
              "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4, "C64": 64}


def _unique_keys(pairs: list) -> dict:
    found = dict(pairs)
    if len(found) != len(pairs):  # JSON lets a later duplicate silently win; a LoRA never has one
        twice = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ValueError(f"key {twice[:80]!r} appears more than once")
    return found


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse(path: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError as exc:  # a header nested thousands of levels deep
        raise HypernetError(f"{path}: not a safetensors file (its header is nested too deeply)") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise HypernetError(f"{path}: not a safetensors file (its header is not valid JSON: {reason})") from exc
    if not isinstance(header, dict):
        raise HypernetError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header


def _check_metadata(path: Path, metadata) -> None:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HypernetError(f"{path}: not a safetensors file (its __metadata__ is not a map of texts)")


def _check_tensor(path: Path, name: str, info, data_size: int) -> None:
    shown = repr(name[:80])
    if not isinstance(info, dict):
        raise HypernetError(f"{path}: not a safetensors file (tensor {shown} is not described by an object)")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise HypernetError(f"{path}: tensor {shown} has dtype {str(dtype)[:20]!r}, which safetensors does not "
                            "define; the file is damaged or not a LoRA")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(map(_is_count, shape)):
        raise HypernetError(f"{path}: not a safetensors file (tensor {shown} has no valid shape)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_count, offsets)):
        raise HypernetError(f"{path}: not a safetensors file (tensor {shown} has no valid data_offsets)")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise HypernetError(f"{path}: tensor {shown} needs bytes {begin}..{end} of the data section, but the file "
                            f"holds only {data_size}: the file is truncated; download or copy it again")
    if math.prod(shape) * DTYPE_BITS[dtype] != 8 * (end - begin):
        raise HypernetError(f"{path}: tensor {shown} claims shape {shape} of {dtype} but holds {end - begin} bytes; "
                            "the file is damaged")


def read_header(path: Path) -> dict:
    """The safetensors header, checked against the file size before any tensor is touched."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HypernetError(f"{path}: not a safetensors file (only {size} bytes, too short for a header); "
                                "the file is truncated or not a LoRA")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise HypernetError(f"{path}: header claims {header_len} bytes but the file has only {size - 8} after "
                                "the length field: the file is truncated or not a safetensors file; download it again")
        if header_len > MAX_HEADER_BYTES:
            raise HypernetError(f"{path}: header of {header_len} bytes is larger than safetensors allows; not a LoRA file")
        raw = f.read(header_len)
    header = _parse(path, raw)
    data_size = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            _check_metadata(path, info)
        else:
            _check_tensor(path, name, info, data_size)
    _check_coverage(path, header, data_size)
    return header


def _check_coverage(path: Path, header: dict, data_size: int) -> None:
    # safetensors itself refuses a data section with gaps, overlaps or trailing bytes; checking
    # it here keeps that refusal ours (one message) instead of an error at the first read.
    ranges = sorted(tuple(info["data_offsets"]) for name, info in header.items() if name != "__metadata__")
    covered = 0
    for begin, end in ranges:
        if begin != covered:
            covered = -1
            break
        covered = end
    if covered != data_size:
        raise HypernetError(f"{path}: not a safetensors file (its tensors do not cover the data section exactly: "
                            "gaps, overlaps or trailing bytes); the file is damaged")
