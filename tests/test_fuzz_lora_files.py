"""Hostile and broken LoRA files: each is a HypernetError with a one-line message, found after
a bounded amount of reading, with nothing written; the dataset builder skips such a folder.

"Bounded" is counted, not timed: the bytes read through Python file objects in the header
reader, whether safetensors was asked to open the file at all, and the bytes of every tensor
it handed out (never more than the file holds).
"""
from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as save_bytes

import hypernet.lora.lora_io as lora_io
import hypernet.common.safetensors_header as safetensors_header
from hypernet.data.builder import build_dataset
from hypernet.data.synth import write_synth
from hypernet.errors import HypernetError
from hypernet.lora.lora_io import read_lora
from hypernet.lora.presets import preset

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


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_lora_file_is_refused_with_bounded_work(name, tmp_path, monkeypatch):
    data, header_only = CASES[name]
    path = tmp_path / "lora.safetensors"
    path.write_bytes(data)
    meter = Meter(monkeypatch)
    _refused(path, meter)
    size = len(data)
    claimed = struct.unpack("<Q", data[:8])[0] if size >= 8 else 0
    assert meter.header_bytes <= 8 + min(claimed, size)  # never past what the header says it is
    assert meter.tensor_bytes <= size
    if header_only:
        assert meter.opens == 0, "safetensors was given a file the header check should have refused"


@pytest.mark.parametrize("name,words", [
    ("list nested 10,000 deep", ["nested too deeply"]), ("offsets [0, 1e999]", ["data_offsets"]),
    ("empty alpha", ["alpha", "one number"]), ("rank 0", ["rank 1 or more"]),
    ("up of 3e38", ["3e+38", "beyond 10000"]), ("int64 up", ["int64", "not floating point"]),
    ("dtype F128", ["F128"]), ("tensor key twice", ["more than once"]), ("shape larger than its bytes", ["shape"]),
    ("pickle", ["not a safetensors file"]),
])
def test_messages_say_what_is_wrong(name, words, tmp_path, monkeypatch):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(CASES[name][0])
    message = _refused(path, Meter(monkeypatch))
    for word in words:
        assert word in message, message


def test_plausible_values_and_an_integer_alpha_are_still_read(tmp_path):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(_with(up=torch.full((4, 2), 9e3), alpha=torch.tensor(4, dtype=torch.int64)))
    module = read_lora(path)[MODULE]
    assert module.alpha == 4.0 and module.up.dtype == torch.float32 and float(module.up.max()) == 9e3


# --- Hypothesis: headers and byte damage no list above thought of ------------------------

_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                          st.text(max_size=8))
_dtypes = st.one_of(st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "F4", "Q8", ""]),
                    _json_scalars)
_dims = st.one_of(st.integers(-3, 9), _json_scalars)
_info = st.one_of(
    st.fixed_dictionaries({"dtype": _dtypes, "shape": st.one_of(st.lists(_dims, max_size=5), _json_scalars),
                           "data_offsets": st.one_of(st.lists(st.one_of(st.integers(-4, 300), _json_scalars),
                                                              max_size=3), _json_scalars)}),
    _json_scalars, st.lists(_json_scalars, max_size=3))
_keys = st.one_of(st.sampled_from([UP, DOWN, ALPHA, "__metadata__", "x.lora_up.weight", f"{MODULE}.lora_A.weight"]),
                  st.builds(lambda name, suffix: name + suffix, st.text(max_size=12).map(lambda t: "lora_te1_" + t),
                            st.sampled_from([".lora_up.weight", ".lora_down.weight", ".alpha"])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(_keys, _info, max_size=4), data=st.binary(max_size=300),
       length_lie=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_random_headers_are_read_or_refused_with_a_message(header, data, length_lie, tmp_path_factory):
    path = tmp_path_factory.mktemp("h") / "lora.safetensors"
    path.write_bytes(_raw(header, data, length_lie))
    try:
        read_lora(path)
    except HypernetError as exc:
        _one_line(str(exc))


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, len(GOOD)), flips=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)),
                                                    max_size=4))
def test_damaged_bytes_of_a_good_file_are_read_or_refused_with_a_message(cut, flips, tmp_path_factory):
    data = bytearray(GOOD[:cut] if cut < len(GOOD) else GOOD)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    path = tmp_path_factory.mktemp("d") / "lora.safetensors"
    path.write_bytes(bytes(data))
    try:
        weights = read_lora(path)
    except HypernetError as exc:
        _one_line(str(exc))
    else:
        for module in weights.values():  # whatever is accepted is a plausible LoRA
            assert module.rank >= 1 and module.up.dtype == torch.float32
            assert float(module.up.abs().max()) <= lora_io.MAX_FACTOR_VALUE


# --- the dataset builder skips every such folder and writes nothing for it -------------------

def test_dataset_builder_skips_each_hostile_lora_and_writes_no_cache_for_it(tmp_path):
    tiny = preset("tiny-attn-r4")
    src = tmp_path / "src"
    write_synth(src, tiny, 2, progress=False)
    hostile = {}
    for i, (name, (data, _)) in enumerate(sorted(CASES.items())):
        folder = src / f"bad-{i:02d}"
        folder.mkdir()
        (folder / "lora.safetensors").write_bytes(data)
        shutil.copy(src / "id-00000" / "embedding.safetensors", folder / "embedding.safetensors")
        hostile[folder.name] = name
    out = tmp_path / "data"
    result = build_dataset(src, out, layout=tiny, heldout=0.0, progress=False)
    assert result.kept == ["id-00000", "id-00001"]
    skipped = {s["id"]: s for s in result.skipped}
    assert set(skipped) == set(hostile)
    for folder, entry in skipped.items():
        assert entry["kind"] == "unreadable or broken LoRA", (hostile[folder], entry)
        _one_line(entry["reason"])
        assert not (out / ".work" / f"{folder}.safetensors").exists()
    assert sorted(p.name for p in (out / ".work").iterdir()) == ["id-00000.safetensors", "id-00001.safetensors"]


def test_dataset_builder_skips_each_hostile_embedding_file_and_writes_no_cache_for_it(tmp_path):
    """embedding.safetensors files come from the same strangers and go through the same header checks.
    (Their magnitude is harmless: every embedding is normalised, in float64.)"""
    tiny = preset("tiny-attn-r4")
    src = tmp_path / "src"
    write_synth(src, tiny, 2, progress=False)
    hostile = {name: data for name, (data, header_only) in CASES.items() if header_only}
    hostile.update({"int64 embedding": save_bytes({"embedding": torch.ones(512, dtype=torch.int64)}),
                    "embedding of 3 dimensions": save_bytes({"embedding": torch.ones(1, 1, 512)}),
                    "NaN embedding": save_bytes({"embedding": torch.full((512,), float("nan"))})})
    for i, data in enumerate(hostile.values()):
        folder = src / f"bad-{i:02d}"
        folder.mkdir()
        shutil.copy(src / "id-00000" / "lora.safetensors", folder / "lora.safetensors")
        (folder / "embedding.safetensors").write_bytes(data)
    out = tmp_path / "data"
    result = build_dataset(src, out, layout=tiny, heldout=0.0, progress=False)
    assert result.kept == ["id-00000", "id-00001"]
    assert len(result.skipped) == len(hostile)
    for entry in result.skipped:
        assert entry["kind"] == "bad embedding file", entry
        _one_line(entry["reason"])
    assert sorted(p.name for p in (out / ".work").iterdir()) == ["id-00000.safetensors", "id-00001.safetensors"]


def test_a_file_with_more_tensors_than_any_lora_is_refused_before_safetensors_reads_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lora_io, "MAX_TENSORS", 2)  # the real bound (300,000) needs a 20 MB header to reach
    path = tmp_path / "lora.safetensors"
    path.write_bytes(GOOD)  # up, down and alpha: one over
    meter = Meter(monkeypatch)
    assert "more than the 2 of the largest LoRA" in _refused(path, meter)
    assert meter.opens == 0
