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

import contextlib
import hashlib
import json
import math
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import hypernet.model.checkpoint as checkpoint
from hypernet.errors import HypernetError
from hypernet.model.autoencoder import AutoencoderConfig
from hypernet.model.checkpoint import load_hypernet, save_hypernet
from hypernet.model.config_bounds import MAX_TENSORS, MIN_BLOCK_TENSORS
from hypernet.model.hypernet import Hypernet, HypernetConfig
from hypernet.model.prior_config import PriorConfig
from hypernet_support import SMALL_LAYOUT

MAX_MESSAGE = 500  # characters: a message names the problem, it does not echo the file

# Two small hypernets that between them use every repeated block list and size field.
VARIANTS = {
    "mlp": dict(autoencoder=AutoencoderConfig(latent_dim=16, hidden=24, blocks=1),
                prior=PriorConfig(width=32, blocks=2, adalora_rank=2, time_dim=16)),
    "transformer": dict(autoencoder=AutoencoderConfig(kind="chunks", chunk=256, token_dim=4, hidden=24, blocks=2),
                        prior=PriorConfig(kind="transformer", conditioning="adanorm", tokens=4, token_width=16,
                                          depth=2, heads=2, time_dim=16)),
}
# The config fields each variant's model is built from (the others are kept but unused).
USED = {"mlp": {"prior": {"width", "blocks", "adalora_rank", "time_dim"},
                "autoencoder": {"latent_dim", "hidden", "blocks"}},
        "transformer": {"prior": {"token_width", "depth", "heads", "tokens", "time_dim"},
                        "autoencoder": {"chunk", "token_dim", "hidden", "blocks"}}}


@dataclass
class Work:
    modules: int = 0  # nn.Module constructions
    weights: int = 0  # tensors read from a file


class TooMuchWork(AssertionError):
    pass


@contextlib.contextmanager
def counting_work(max_modules: int | None = None):
    """Counts module constructions and weight reads for the duration of the block. Past
    `max_modules` it fails at once: a regression must fail the test, not hang it for minutes."""
    work = Work()
    module_init, real_safe_open = nn.Module.__init__, checkpoint.safe_open

    def counting_init(self, *args, **kwargs):
        work.modules += 1
        if max_modules is not None and work.modules > max_modules:
            raise TooMuchWork(f"more than {max_modules} modules built while loading a broken checkpoint")
        module_init(self, *args, **kwargs)

    class CountingSafeOpen:
        def __init__(self, *args, **kwargs):
            self.inner = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self.file = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, key):
            work.weights += 1
            return self.file.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.file, name)

    nn.Module.__init__ = counting_init
    checkpoint.safe_open = CountingSafeOpen
    try:
        yield work
    finally:
        nn.Module.__init__ = module_init
        checkpoint.safe_open = real_safe_open


def folder_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refuse(path: Path, match: str | None = None, max_modules: int = 0, max_weights: int = 0) -> HypernetError:
    """Load `path`, demand a refusal within the given work, one line, nothing written."""
    before = folder_state(path.parent)
    with counting_work(max_modules) as work, pytest.raises(HypernetError, match=match) as caught:
        load_hypernet(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) <= MAX_MESSAGE, message[:1000]
    assert work.modules <= max_modules, f"{work.modules} modules built before refusing: {message}"
    assert work.weights <= max_weights, f"{work.weights} weights read before refusing: {message}"
    assert folder_state(path.parent) == before
    return caught.value


def load_or_refuse(path: Path, good: Good) -> None:
    """Either a clean load or a clean refusal, never more work than the honest model."""
    before = folder_state(path.parent)
    with counting_work(good.work.modules) as work:
        try:
            load_hypernet(path)
        except HypernetError as exc:
            assert "\n" not in str(exc) and len(str(exc)) <= MAX_MESSAGE, str(exc)[:1000]
    assert work.modules <= good.work.modules and work.weights <= good.work.weights
    assert folder_state(path.parent) == before


@dataclass
class Good:
    """A valid checkpoint and what loading it costs."""

    variant: str
    path: Path
    tensors: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)
    work: Work

    @property
    def config(self) -> dict:
        return json.loads(self.metadata["config"])


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def good(request, tmp_path_factory) -> Good:
    torch.manual_seed(0)
    model = Hypernet(HypernetConfig(layout=SMALL_LAYOUT, embedding_model="fuzz-face", **VARIANTS[request.param]))
    path = tmp_path_factory.mktemp(request.param) / "good.safetensors"
    save_hypernet(model, path)
    with counting_work() as work:
        load_hypernet(path)
    with safe_open(str(path), framework="pt") as f:
        return Good(request.param, path, {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata()), work)


def write(folder: Path, tensors: dict, metadata: dict, name: str = "broken.safetensors") -> Path:
    path = folder / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def with_config(good: Good, folder: Path, edit) -> Path:
    config = good.config
    edit(config)
    return write(folder, good.tensors, {**good.metadata, "config": json.dumps(config)})


def raw_file(header: str | bytes, data: bytes = b"", declared: int | None = None) -> bytes:
    body = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(body) if declared is None else declared) + body + data


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
    tensors = {k: v for k, v in good.tensors.items() if k != "vae.enc_in.bias"}
    refuse(write(tmp_path, tensors, good.metadata), "tensors missing", good.work.modules)
    tensors = {**good.tensors, "prior.extra": torch.zeros(2)}
    refuse(write(tmp_path, tensors, good.metadata), "unexpected tensors", good.work.modules)


# --- configs -------------------------------------------------------------------------------------

def _set(section: str | None, field: str, value):
    def edit(config):
        (config[section] if section else config)[field] = value
    return edit


ABSURD = [  # (section, field, value): each would take minutes or gigabytes if it were built
    ("prior", "blocks", 100_000), ("prior", "width", 10**9), ("prior", "time_dim", 10**9),
    ("prior", "adalora_rank", 10**6), ("prior", "tokens", 10**9), ("prior", "token_width", 2**40),
    ("prior", "depth", 100_000), ("prior", "heads", 2**20), ("autoencoder", "blocks", 10_000),
    ("autoencoder", "hidden", 2**31), ("autoencoder", "latent_dim", 10**12), ("autoencoder", "chunk", 10**9),
    ("autoencoder", "token_dim", 10**9), ("prior", "blocks", 1), ("autoencoder", "blocks", 0),
    ("prior", "width", 1e999), ("autoencoder", "hidden", 1e999), ("prior", "width", 3.5),
    ("prior", "width", True), ("prior", "blocks", "2"), ("prior", "width", [[[[32]]]]),
]


@pytest.mark.parametrize("section,field,value", ABSURD)
def test_absurd_sizes_are_refused_before_anything_is_built(good, tmp_path, section, field, value):
    path = with_config(good, tmp_path, _set(section, field, value))
    if field in USED[good.variant][section] and good.config[section].get(field) != value:
        refuse(path)
    else:  # a field this kind of model does not read: whatever happens, it costs nothing more
        load_or_refuse(path, good)


def test_block_indices_without_the_weights_of_a_block(good, tmp_path):
    """Many block indices with one small tensor each: the count matches, the weights do not."""
    prefix, field = ("prior", "blocks") if good.variant == "mlp" else ("prior", "depth")
    have = good.config[prefix][field]
    extra = {f"prior.blocks.{i}.x": torch.zeros(1) for i in range(have, have + 300)}
    config = good.config
    config[prefix][field] = have + 300
    refuse(write(tmp_path, {**good.tensors, **extra}, {**good.metadata, "config": json.dumps(config)}),
           "need at least")


@pytest.mark.parametrize("prior", [dict(conditioning="adanorm"), dict(conditioning="adalora", adalora_gate=True),
                                   dict(kind="transformer", conditioning="adalora", tokens=2, token_width=8, heads=2),
                                   dict(kind="transformer", conditioning="adanorm", tokens=2, token_width=8, heads=2)])
def test_every_block_kind_has_at_least_the_minimum_tensors_the_bound_assumes(prior):
    for autoencoder in (AutoencoderConfig(latent_dim=8, hidden=8), AutoencoderConfig(kind="chunks", chunk=64, hidden=8)):
        config = HypernetConfig(layout=SMALL_LAYOUT, embedding_model="x", autoencoder=autoencoder,
                                prior=PriorConfig(width=8, blocks=2, time_dim=8, depth=2, **prior))
        with torch.device("meta"):
            keys = Hypernet(config).state_dict()
        for prefix in ("prior.blocks.", "vae.enc_blocks.", "vae.dec_blocks."):
            per_block = {}
            for key in (k for k in keys if k.startswith(prefix)):
                index = key[len(prefix):].split(".")[0]
                per_block[index] = per_block.get(index, 0) + 1
            assert len(per_block) == 2 and min(per_block.values()) >= MIN_BLOCK_TENSORS, (prefix, per_block)


@pytest.mark.parametrize("field,value", [("embedding_dim", 1e999), ("embedding_dim", 10**6),
                                         ("embedding_dim", 2**70), ("global_dim", 1e999)])
def test_top_level_sizes(good, tmp_path, field, value):
    refuse(with_config(good, tmp_path, _set(None, field, value)))


@pytest.mark.parametrize("count,name,match", [(300_000, None, "character config|LoRA modules"),
                                              (100_000, "m", "100,000 LoRA modules")])
def test_a_layout_of_many_modules_is_refused_before_it_is_parsed(good, tmp_path, count, name, match):
    """The layout's own checks grow with its module count: count against the file first."""
    module = good.config["layout"]["modules"][0]
    module = [name or module[0], *module[1:]]
    refuse(with_config(good, tmp_path, lambda c: c["layout"].update(modules=[module] * count)), match)


def test_a_layout_with_more_values_than_the_file(good, tmp_path):
    def grow(config):
        config["layout"]["modules"][0][1] = 10**12  # in_features
    refuse(with_config(good, tmp_path, grow))


@pytest.mark.parametrize("text", ['{"a":' * 10_000 + "1" + "}" * 10_000, "[" * 100_000, '{"embedding_dim": 1e999}'])
def test_hostile_config_json(good, tmp_path, text):
    refuse(write(tmp_path, good.tensors, {**good.metadata, "config": text}))


def test_config_nested_deep_inside_a_field(good, tmp_path):
    nested = json.loads('{"a":' * 500 + "1" + "}" * 500)
    refuse(with_config(good, tmp_path, _set(None, "global_encoder", nested)))
    refuse(with_config(good, tmp_path, _set(None, "layout", [nested])))


def test_long_values_are_not_echoed(good, tmp_path):
    long = "9" * 5_000
    error = refuse(write(tmp_path, good.tensors, {**good.metadata, "format_version": long}), "format_version")
    assert "9" * 100 not in str(error)
    error = refuse(write(tmp_path, good.tensors, {**good.metadata, "format_version": "x" * 5_000}), "format_version")
    assert "x" * 100 not in str(error)
    error = refuse(with_config(good, tmp_path, _set(None, "condition", "y" * 5_000)), "condition")
    assert "y" * 100 not in str(error)


# --- generated cases -------------------------------------------------------------------------------

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.data())
def test_flipped_bytes_anywhere(good, tmp_path, data):
    raw = bytearray(good.path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "flipped.safetensors"
    path.write_bytes(bytes(raw))
    load_or_refuse(path, good)


SIZE_FIELDS = [("prior", f) for f in ("width", "blocks", "adalora_rank", "time_dim", "tokens", "token_width", "depth",
                                      "heads")] + \
              [("autoencoder", f) for f in ("latent_dim", "hidden", "blocks", "chunk", "token_dim")] + \
              [(None, "embedding_dim"), (None, "global_dim")]
VALUES = st.one_of(st.integers(0, 8), st.integers(0, 300), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.booleans(), st.text(max_size=20), st.none(), st.lists(st.integers(), max_size=3))


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(SIZE_FIELDS), VALUES), min_size=1, max_size=3))
def test_edited_config_sizes(good, tmp_path, edits):
    def edit(config):
        for (section, field), value in edits:
            _set(section, field, value)(config)
    load_or_refuse(with_config(good, tmp_path, edit), good)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=10)


@FUZZ
@given(path=st.sampled_from(["layout", "prior", "autoencoder", "diffusion", "global_encoder", "condition",
                             "embedding_model", "layout.modules", "layout.version"]), value=JSON)
def test_config_parts_replaced_by_arbitrary_json(good, tmp_path, path, value):
    def edit(config):
        *parents, last = path.split(".")
        target = config
        for key in parents:
            target = target[key]
        target[last] = value
    load_or_refuse(with_config(good, tmp_path, edit), good)
