"""Output files of the pipeline: refused before any work when they cannot be written, and never
silently replaced."""
from __future__ import annotations

from pathlib import Path

from ..common.files import save_safetensors_atomic, save_safetensors_new, sha256_file
from ..errors import HypernetError
from ..lora.lora_io import lora_metadata, lora_to_state_dict
from ..lora.weights import LoraWeights
from ..model.condition import needs_global
from ..model.hypernet import Hypernet
from .sampling import provenance


def check_output(out: Path, overwrite: bool) -> None:
    """A .safetensors `out` that does not exist yet (or may be replaced): checked before any work."""
    if out.suffix != ".safetensors":
        raise HypernetError(f"--out {out} must end in .safetensors")
    if out.exists() and not overwrite:
        raise HypernetError(f"{out} exists; pass --overwrite to replace it (nothing was changed)")


def write_sampled_lora(weights: LoraWeights, out: Path, model: Hypernet, checkpoint: Path, *, seed: int, steps: int,
                       guidance: float, eta: float, overwrite: bool) -> None:
    """The kohya LoRA file with the provenance that makes it again (sampling.provenance)."""
    metadata = provenance(checkpoint.name, sha256_file(checkpoint), seed, steps, guidance, eta,
                          model.embedding_model)
    if needs_global(model.condition):
        metadata.update(condition=model.condition, global_encoder=model.config.global_encoder["name"])
    state, metadata = lora_to_state_dict(weights), lora_metadata(weights, model.layout.base_model, metadata)
    if overwrite:
        save_safetensors_atomic(state, out, metadata)
    elif not save_safetensors_new(state, out, metadata):
        raise HypernetError(f"{out} appeared while sampling; nothing was written")
