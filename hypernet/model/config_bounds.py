"""Checks a checkpoint's config against the tensors its file holds, before anything is built.

A config is a few lines of JSON anyone can edit, while building a model costs time in every
module it asks for (on the meta device no memory, but `prior.blocks = 100000` still took two
minutes) and the layout's own checks grow with its module count. The tensors in the file bound
what an honest config can ask for, and reading their names and shapes from the header costs
nothing, so every count and size in the config is compared with them first:

- repeated blocks (prior blocks or depth, autoencoder blocks) must match the block indices
  that have weights in the file, with at least the tensors of the smallest block for each;
- the layout's module count and value count must fit the `norm.reference` vector;
- every width, rank and embedding size must be an integer no larger than the largest tensor
  dimension in the file (each of them is some tensor's dimension or divides one).

What passes is then built on the meta device and checked tensor by tensor (checkpoint.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import HypernetError
from .hypernet import HypernetConfig
from ..common.messages import brief

# The presets' hypernets have under 100 tensors and 64 ADALoRA blocks about 800: a header with
# more describes no model of this pack, and meta-building what it could describe takes ~0.2 s.
MAX_TENSORS = 2048
MIN_BLOCK_TENSORS = 6  # the smallest block (ResidualBlock, AdaNormBlock): three weights, three biases
REFERENCE_KEY = "norm.reference"
# (config section, field, prefix of the blocks in the state dict) per repeated block list.
REPEATED = {"mlp": ("prior", "blocks", "prior.blocks."),
            "transformer": ("prior", "depth", "prior.blocks.")}
AUTOENCODER_REPEATED = (("autoencoder", "blocks", "vae.enc_blocks."), ("autoencoder", "blocks", "vae.dec_blocks."))
# The size fields each kind uses as tensor dimensions (unused fields keep their defaults).
PRIOR_SIZES = {"mlp": ("width", "time_dim"), "transformer": ("token_width", "time_dim", "tokens", "heads")}
AUTOENCODER_SIZES = {"mlp": ("latent_dim", "hidden"), "chunks": ("chunk", "token_dim", "hidden"), "linear": ("latent_dim",)}


@dataclass(frozen=True)
class HeaderSizes:
    """What the tensors of a file can support, from its header alone."""

    largest_dim: int
    reference_size: int
    block_counts: dict[str, int]
    block_tensors: dict[str, int]

    @classmethod
    def of(cls, found: dict[str, tuple[list[int], str]]) -> "HeaderSizes":
        prefixes = {prefix for _, _, prefix in (*REPEATED.values(), *AUTOENCODER_REPEATED)}
        indices: dict[str, set[str]] = {prefix: set() for prefix in prefixes}
        tensors = dict.fromkeys(prefixes, 0)
        for key in found:
            for prefix in prefixes:
                if key.startswith(prefix):
                    indices[prefix].add(key[len(prefix):].split(".", 1)[0])
                    tensors[prefix] += 1
        reference = found.get(REFERENCE_KEY, ([0], ""))[0]
        return cls(largest_dim=max((d for shape, _ in found.values() for d in shape), default=0),
                   reference_size=reference[0] if len(reference) == 1 else 0,
                   block_counts={prefix: len(found_indices) for prefix, found_indices in indices.items()},
                   block_tensors=tensors)


def _refuse(name: str, detail: str) -> HypernetError:
    return HypernetError(f"{name}: its config describes a model that cannot be built from the file's tensors "
                         f"({detail}); the config was edited or the file is damaged")


def check_tensor_count(count: int, name: str) -> None:
    if count > MAX_TENSORS:
        raise HypernetError(f"{name} holds {count:,} tensors, far more than any hypernet ({MAX_TENSORS:,} at most); "
                            "it is not a checkpoint of this node pack")


def check_layout_size(data: dict, sizes: HeaderSizes, name: str) -> None:
    """Before the layout is parsed: each module has at least one value in norm.reference."""
    layout = data.get("layout")
    modules = layout.get("modules") if isinstance(layout, dict) else None
    if isinstance(modules, list) and len(modules) > sizes.reference_size:
        raise _refuse(name, f"{len(modules):,} LoRA modules in its layout, {sizes.reference_size:,} values in "
                            f"{REFERENCE_KEY}")


def _size_fields(config: HypernetConfig) -> list[tuple[str, object]]:
    fields = [("embedding_dim", config.embedding_dim)]
    if config.global_dim:
        fields.append(("global_dim", config.global_dim))
    fields += [(f"prior.{f}", getattr(config.prior, f)) for f in PRIOR_SIZES[config.prior.kind]]
    if config.prior.conditioning == "adalora":
        fields.append(("prior.adalora_rank", config.prior.adalora_rank))
    fields += [(f"autoencoder.{f}", getattr(config.autoencoder, f)) for f in AUTOENCODER_SIZES[config.autoencoder.kind]]
    if config.sampler.kind == "kernel":
        fields.append(("sampler.rows", config.sampler.rows))
    if config.sampler.kind == "ridge-lora":
        fields.append(("sampler.rank", config.sampler.rank))
    return fields


def _check_sizes(config: HypernetConfig, sizes: HeaderSizes, name: str) -> None:
    for field, value in _size_fields(config):
        if not isinstance(value, int) or isinstance(value, bool):
            raise HypernetError(f"{name}: config field {field} must be a whole number, not {brief(value)}")
        if value > sizes.largest_dim:
            raise _refuse(name, f"{field} is {value:,}, no tensor dimension is above {sizes.largest_dim:,}")


def _check_block_counts(config: HypernetConfig, sizes: HeaderSizes, name: str) -> None:
    for section, field, prefix in (REPEATED[config.prior.kind], *AUTOENCODER_REPEATED):
        wanted = getattr(getattr(config, section), field)
        if section == "autoencoder" and config.autoencoder.kind == "linear":
            wanted = 0  # a linear autoencoder has no blocks, whatever its config's (unused) field says
        if not isinstance(wanted, int) or wanted != sizes.block_counts[prefix]:
            raise _refuse(name, f"{section}.{field} is {brief(wanted)}, the file has weights for "
                                f"{sizes.block_counts[prefix]} such blocks")
        if wanted * MIN_BLOCK_TENSORS > sizes.block_tensors[prefix]:
            raise _refuse(name, f"{wanted} {section} blocks need at least {wanted * MIN_BLOCK_TENSORS} tensors under "
                                f"{prefix}, the file has {sizes.block_tensors[prefix]}")


def check_config_against_tensors(config: HypernetConfig, sizes: HeaderSizes, name: str) -> None:
    """Refuse a config that asks for more than the file's tensors hold, before building it."""
    _check_sizes(config, sizes, name)
    _check_block_counts(config, sizes, name)
    if config.layout.num_values != sizes.reference_size:
        raise _refuse(name, f"{config.layout.num_values:,} values in its layout, {sizes.reference_size:,} in "
                            f"{REFERENCE_KEY}")
