"""Hostile and broken LoRA files: each is a HypernetError with a one-line message, found after
a bounded amount of reading, with nothing written; the dataset builder skips such a folder.

"Bounded" is counted, not timed: the bytes read through Python file objects in the header
reader, whether safetensors was asked to open the file at all, and the bytes of every tensor
it handed out (never more than the file holds).
"""
from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lora_fuzz_support import (
    ALPHA,
    CASES,
    DOWN,
    GOOD,
    MODULE,
    UP,
    Meter,
    _one_line,
    _raw,
    _refused,
    _with,
)

import hypernet.lora.lora_io as lora_io
from hypernet.errors import HypernetError
from hypernet.lora.lora_io import read_lora


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


def test_a_file_with_more_tensors_than_any_lora_is_refused_before_safetensors_reads_it(tmp_path, monkeypatch):
    monkeypatch.setattr(lora_io, "MAX_TENSORS", 2)  # the real bound (300,000) needs a 20 MB header to reach
    path = tmp_path / "lora.safetensors"
    path.write_bytes(GOOD)  # up, down and alpha: one over
    meter = Meter(monkeypatch)
    assert "more than the 2 of the largest LoRA" in _refused(path, meter)
    assert meter.opens == 0
