"""Broken and hostile hypernet checkpoints: each is refused with the pack's error, quickly, with
nothing written (issue 14).

For every case: `HypernetError`, a one-line message of bounded length, bounded work and no file
written or changed. Work is counted, not timed: every nn.Module constructed while loading is
counted (a config that asks for 100,000 blocks used to build them all on the meta device before
being refused, two minutes), and so is every weight read from the file. A config that disagrees
with the file's tensors must be refused before a single module is built; a file whose config is
honest but whose tensors are not may build the model its config describes, no more.
"""
from __future__ import annotations

import json
import math
import pickle
import struct

import pytest
import torch
from checkpoint_fuzz_support import (
    FUZZ,
    good,  # noqa: F401  (fixture)
    load_or_refuse,
    raw_file,
    refuse,
    write,
)
from hypothesis import given
from hypothesis import strategies as st

from hypernet.model.config_bounds import MAX_TENSORS

# --- the file itself -----------------------------------------------------------------------------

def test_a_valid_checkpoint_loads_within_the_bounds_used_below(good):
    assert 0 < good.work.modules < 200 and good.work.weights == len(good.tensors)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.5, 0.999])
def test_truncated_files(good, tmp_path, fraction):
    data = good.path.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:int(len(data) * fraction)])
    refuse(path, "truncated or corrupt")


@pytest.mark.parametrize("declared", [0, 1, 7, 2**40, 2**63, 2**64 - 1, "longer", "shorter"])
def test_header_length_lies(good, tmp_path, declared):
    data = good.path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    declared = {"longer": length + 100, "shorter": length - 100}.get(declared, declared)
    path = tmp_path / "lie.safetensors"
    path.write_bytes(struct.pack("<Q", declared) + data[8:])
    refuse(path, "truncated or corrupt")


def test_header_nested_ten_thousand_deep(tmp_path):
    path = tmp_path / "nested.safetensors"
    path.write_bytes(raw_file('{"a":' * 10_000 + "1" + "}" * 10_000))
    refuse(path, "truncated or corrupt")


@pytest.mark.parametrize("entry", [
    {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]},  # unknown dtype
    {"dtype": "F32", "shape": [2], "data_offsets": [0, 1e999]},  # numeric overflow
    {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 8]},  # shape lie (and overflow)
    {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},  # shape lie
    {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]},  # offsets backwards
])
def test_malformed_header_entries(tmp_path, entry):
    header = json.dumps({"__metadata__": {"format": "lora-hypernet"}, "x": entry})
    path = tmp_path / "entry.safetensors"
    path.write_bytes(raw_file(header, b"\0" * 8))
    refuse(path, "truncated or corrupt")


def test_duplicate_tensor_names(good, tmp_path):
    header = ('{"__metadata__": {"format": "lora-hypernet"}, "x": {"dtype": "F32", "shape": [2], '
              '"data_offsets": [0, 8]}, "x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}')
    path = tmp_path / "dup.safetensors"
    path.write_bytes(raw_file(header, b"\0" * 16))
    refuse(path)


def test_a_pickle_under_a_safetensors_name(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"prior.latent_in.weight": [1.0, 2.0]}))
    refuse(path, "truncated or corrupt")


def test_too_many_tensors(tmp_path):
    path = write(tmp_path, {f"t{i}": torch.zeros(1) for i in range(MAX_TENSORS + 1)}, {"format": "lora-hypernet"})
    refuse(path, "tensors, far more than any hypernet")


# --- tensors that disagree with an honest config --------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights(good, tmp_path, value):
    tensors = dict(good.tensors)
    key = sorted(tensors)[len(tensors) // 2]
    tensors[key] = tensors[key].clone().flatten().index_fill(0, torch.tensor([0]), value).view(tensors[key].shape)
    refuse(write(tmp_path, tensors, good.metadata), "NaN or infinite", good.work.modules, good.work.weights)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.float64])
def test_non_float32_family_dtypes(good, tmp_path, dtype):
    tensors = dict(good.tensors)
    tensors["prior.null_cond"] = tensors["prior.null_cond"].to(dtype)
    refuse(write(tmp_path, tensors, good.metadata), "only float tensors", good.work.modules)


def test_tensor_shape_lie(good, tmp_path):
    tensors = dict(good.tensors)
    tensors["prior.latent_in.weight"] = tensors["prior.latent_in.weight"][:, :3].contiguous()
    refuse(write(tmp_path, tensors, good.metadata), "has shape", good.work.modules)


def test_missing_and_extra_tensors(good, tmp_path):
    dropped = "vae.basis" if good.variant == "linear" else "vae.enc_in.bias"  # not a block's: the count check passes
    tensors = {k: v for k, v in good.tensors.items() if k != dropped}
    refuse(write(tmp_path, tensors, good.metadata), "tensors missing", good.work.modules)
    tensors = {**good.tensors, "prior.extra": torch.zeros(2)}
    refuse(write(tmp_path, tensors, good.metadata), "unexpected tensors", good.work.modules)


# --- generated cases -------------------------------------------------------------------------------



@FUZZ
@given(data=st.data())
def test_flipped_bytes_anywhere(good, tmp_path, data):
    raw = bytearray(good.path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(raw))
    load_or_refuse(path, good)

