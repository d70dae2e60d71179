"""Hostile hypernet checkpoint configs (sizes, layouts, JSON) are refused before anything is
built, with nothing written (issue 14). The shared checks are in checkpoint_fuzz_support.py."""
from __future__ import annotations

import json

import pytest
import torch
from checkpoint_fuzz_support import (
    FUZZ,
    USED,
    good,  # noqa: F401  (fixture)
    load_or_refuse,
    refuse,
    with_config,
    write,
)
from hypernet_support import SMALL_LAYOUT
from hypothesis import given
from hypothesis import strategies as st

from hypernet.model.autoencoder import AutoencoderConfig
from hypernet.model.config_bounds import MIN_BLOCK_TENSORS
from hypernet.model.hypernet import Hypernet, HypernetConfig
from hypernet.model.prior_config import PriorConfig

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
