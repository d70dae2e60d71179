"""Shared by the hostile-LoRA-file tests: the good file, the hostile CASES, the Meter that counts
what reading costs, and the refusal checks."""
from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_bytes

import hypernet.common.safetensors_header as safetensors_header
import hypernet.lora.lora_io as lora_io
from hypernet.errors import HypernetError
from hypernet.lora.lora_io import read_lora

MODULE = "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_q"
UP, DOWN, ALPHA = f"{MODULE}.lora_up.weight", f"{MODULE}.lora_down.weight", f"{MODULE}.alpha"


def _good() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {UP: torch.randn(4, 2, generator=gen) * 0.01, DOWN: torch.randn(2, 4, generator=gen) * 0.1,
            ALPHA: torch.tensor(2.0)}


def _with(**changes) -> bytes:
    tensors = _good()
    for role, value in changes.items():
        key = {"up": UP, "down": DOWN, "alpha": ALPHA}[role]
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    return save_bytes(tensors)


def _raw(header, data: bytes = b"", length: int | None = None) -> bytes:
    """A file with any header (a JSON-able value or raw bytes) and an optional length lie."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _entry(dtype="F32", shape=(2, 2), offsets=(0, 16)):
    return {UP: {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}


def _nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return b'{"' + UP.encode() + b'": ' + (open_ * depth).encode() + (close * depth).encode() + b"}"


def _pickle_file() -> bytes:
    return pickle.dumps({UP: [[0.0] * 2] * 4})  # bytes only: never loaded by anyone


def _torch_zip_lookalike() -> bytes:
    """What torch.save writes (a zip with a pickle inside), built without pickling a tensor."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"weights": 1}))
    return buffer.getvalue()


GOOD = save_bytes(_good())
HEADER_LEN = struct.unpack("<Q", GOOD[:8])[0]

# name -> (file bytes, refused from the header alone: safetensors must never be asked to open it)
CASES = {
    # truncations
    "empty": (b"", True),
    "three bytes": (GOOD[:3], True),
    "length field only": (GOOD[:8], True),
    "cut in the header": (GOOD[:8 + HEADER_LEN // 2], True),
    "cut after the header": (GOOD[:8 + HEADER_LEN], True),
    "cut in the data": (GOOD[:-7], True),
    # header-length lies
    "length beyond the file": (_raw(_entry(), bytes(16), length=10**6), True),
    "length 2**64-1": (_raw(_entry(), bytes(16), length=2**64 - 1), True),
    "length zero": (_raw(_entry(), bytes(16), length=0), True),
    "length short of the JSON": (_raw(_entry(), bytes(16), length=20), True),
    "length over the safetensors limit": (struct.pack("<Q", 100_000_001) + bytes(100_000_001), True),
    # nesting
    "list nested 10,000 deep": (_raw(_nested(10_000)), True),
    "object nested 10,000 deep": (_raw(b"{" + b'"a":{' * 10_000 + b"}" * 10_001), True),
    "metadata nested 10,000 deep": (_raw(b'{"__metadata__":' + b"[" * 10_000 + b"]" * 10_000 + b"}"), True),
    # numeric overflow and nonsense numbers
    "offsets [0, 1e999]": (_raw(_entry(offsets=(0, "1e999"))), True),
    "offsets 10**30": (_raw(_entry(offsets=(0, 10**30)), bytes(16)), True),
    "offsets 5,000 digits": (_raw(b'{"' + UP.encode() + b'": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, '
                                  + b"9" * 5000 + b"]}}", bytes(16)), True),
    "offsets negative": (_raw(_entry(offsets=(-16, 0)), bytes(16)), True),
    "offsets reversed": (_raw(_entry(offsets=(16, 0)), bytes(16)), True),
    "offsets booleans": (_raw(_entry(offsets=(False, True)), bytes(16)), True),
    "offsets floats": (_raw(_entry(offsets=(0.0, 16.0)), bytes(16)), True),
    "offsets three": (_raw(_entry(offsets=(0, 8, 16)), bytes(16)), True),
    "shape 1e999": (_raw(b'{"' + UP.encode() + b'": {"dtype": "F32", "shape": [1e999], "data_offsets": [0, 16]}}',
                         bytes(16)), True),
    "shape 2**64 x 2**64": (_raw(_entry(shape=(2**64, 2**64)), bytes(16)), True),
    "shape negative": (_raw(_entry(shape=(-2, -2)), bytes(16)), True),
    "shape of 100 dimensions": (_raw(_entry(shape=(1,) * 100, offsets=(0, 4)), bytes(4)), True),
    "NaN in the header": (_raw(b'{"' + UP.encode() + b'": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, NaN]}}',
                               bytes(16)), True),
    # unknown dtypes
    "dtype F128": (_raw(_entry(dtype="F128"), bytes(16)), True),
    "dtype number": (_raw(_entry(dtype=7), bytes(16)), True),
    "dtype missing": (_raw({UP: {"shape": [2, 2], "data_offsets": [0, 16]}}, bytes(16)), True),
    # structure
    "header a list": (_raw([1, 2, 3]), True),
    "header null": (_raw(None), True),
    "header not UTF-8": (_raw(b"\xff\xfe{}"), True),
    "tensor described by a string": (_raw({UP: "F32"}), True),
    "metadata a list": (_raw({"__metadata__": ["a"], **_entry()}, bytes(16)), True),
    "metadata values not text": (_raw({"__metadata__": {"a": 1}, **_entry()}, bytes(16)), True),
    # duplicate keys
    "tensor key twice": (_raw(b'{"' + UP.encode() + b'": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}, "'
                              + UP.encode() + b'": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', bytes(16)),
                         True),
    # shape lies
    "shape larger than its bytes": (_raw(_entry(shape=(4, 2), offsets=(0, 16)), bytes(16)), True),
    "shape smaller than its bytes": (_raw(_entry(shape=(1, 2), offsets=(0, 16)), bytes(16)), True),
    "key with a line break": (save_bytes({f"lora_te1_a\nb{s}": torch.ones(2, 2) * 0.1
                                         for s in (".lora_up.weight", ".lora_down.weight")}), False),
    "key of 10,000 characters": (save_bytes({"lora_te1_" + "a" * 10_000 + s: torch.ones(2, 2) * 0.1
                                            for s in (".lora_up.weight", ".lora_down.weight")}), False),
    "two tensors on the same bytes": (_raw({**_entry(), DOWN: {"dtype": "F32", "shape": [2, 2],
                                                              "data_offsets": [0, 16]}}, bytes(16)), False),
    # pickles and other files under a .safetensors name
    "pickle": (_pickle_file(), True),
    "torch.save zip": (_torch_zip_lookalike(), True),
    "JPEG": (b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(64), True),
    # values no trained LoRA has
    "NaN up": (_with(up=torch.full((4, 2), float("nan"))), False),
    "Inf down": (_with(down=torch.full((2, 4), float("inf"))), False),
    "NaN alpha": (_with(alpha=torch.tensor(float("nan"))), False),
    "up of 3e38": (_with(up=torch.full((4, 2), 3e38)), False),
    "down of -1e5": (_with(down=torch.full((2, 4), -1e5)), False),
    "float16 up of 6e4": (_with(up=torch.full((4, 2), 6e4, dtype=torch.float16)), False),
    "alpha of 1e30": (_with(alpha=torch.tensor(1e30)), False),
    "int64 up": (_with(up=torch.ones(4, 2, dtype=torch.int64)), False),
    "int8 down": (_with(down=torch.ones(2, 4, dtype=torch.int8)), False),
    "bool up": (_with(up=torch.ones(4, 2, dtype=torch.bool)), False),
    "bool alpha": (_with(alpha=torch.tensor(True)), False),
    "rank 0": (_with(up=torch.zeros(4, 0), down=torch.zeros(0, 4)), False),
    "rank 0 without alpha": (_with(up=torch.zeros(4, 0), down=torch.zeros(0, 4), alpha=None), False),
    "zero outputs": (_with(up=torch.zeros(0, 2)), False),
    "empty alpha": (_with(alpha=torch.zeros(0)), False),
    "alpha of two values": (_with(alpha=torch.ones(2)), False),
    "up of 3 dimensions": (_with(up=torch.zeros(4, 2, 1)), False),
    "ranks that differ": (_with(down=torch.zeros(3, 4)), False),
}


class Meter:
    """Counts what reading one file costs: bytes read by the header reader, safetensors opens,
    and the bytes of the tensors safetensors handed out."""

    def __init__(self, monkeypatch):
        self.header_bytes = 0
        self.opens = 0
        self.tensor_bytes = 0
        real_open, real_safe_open = open, lora_io.safe_open
        meter = self

        class CountingFile:
            def __init__(self, f):
                self.f = f

            def read(self, n=-1):
                data = self.f.read(n)
                meter.header_bytes += len(data)
                return data

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        class CountingSafeOpen:
            def __init__(self, *args, **kwargs):
                meter.opens += 1
                self.inner = real_safe_open(*args, **kwargs)

            def __enter__(self):
                self.f = self.inner.__enter__()
                return self

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, key):
                tensor = self.f.get_tensor(key)
                meter.tensor_bytes += tensor.numel() * tensor.element_size()
                return tensor

        monkeypatch.setattr(safetensors_header, "open", lambda *a, **k: CountingFile(real_open(*a, **k)), raising=False)
        monkeypatch.setattr(lora_io, "safe_open", CountingSafeOpen)


def _one_line(message: str) -> None:
    assert message and "\n" not in message and len(message) < 600, message


def _refused(path: Path, meter: Meter) -> str:
    before = sorted(path.parent.iterdir())
    with pytest.raises(HypernetError) as info:
        read_lora(path)
    message = str(info.value)
    _one_line(message)
    assert path.name in message
    assert sorted(path.parent.iterdir()) == before  # nothing written beside it
    return message
