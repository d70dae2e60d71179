"""The noise floor of a collection whose generator knows each identity's noiseless LoRA (issue 19).

A collection's LoRAs are the identities' "true" LoRAs plus noise (two trainings of one person
give different LoRAs; `synth --noise`). No hypernet can be expected to predict the noise, so the
best any predictor can do on `evaluate`'s metrics is about what the noiseless LoRAs themselves
score against the noisy held-out targets: that is the noise floor. Where the collection carries
the noiseless LoRAs (`synth --truth` writes SRC/<identity>/truth.safetensors), `evaluate --truth
SRC` reports it beside the hypernet's own numbers, so "reconstruction error 0.5" can be read
against what the noise alone costs.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.dataset import LoraDataset
from ..data.identity_folders import TRUTH_FILE
from ..errors import HypernetError
from ..lora.lora_io import read_lora
from ..lora.vectorize import flatten
from .metrics import compare


def read_truth(source: str | Path, ids: list[str], dataset: LoraDataset) -> torch.Tensor:
    """[len(ids), D] noiseless LoRAs of these identities from SRC/<id>/truth.safetensors, in the
    dataset's layout (canonical factors: the metrics compare delta W, whatever the factors)."""
    source = Path(source)
    if not source.is_dir():
        raise HypernetError(f"--truth {source} is not a folder: give the collection the dataset was built from")
    out = torch.empty(len(ids), dataset.layout.num_values)
    for row, identity in enumerate(ids):
        path = source / identity / TRUTH_FILE
        if not path.is_file():
            raise HypernetError(f"--truth {source}: identity {identity} has no {TRUTH_FILE}; write the collection "
                                "with `python -m hypernet synth --truth` or leave out --truth")
        try:
            out[row] = flatten(read_lora(path).unet_only(), dataset.layout, source=str(path))
        except HypernetError as exc:
            raise HypernetError(f"--truth {source}: {exc}") from exc
    return out


def noise_floor(dataset: LoraDataset, source: str | Path, limit: int | None = None) -> dict[str, float]:
    """top1, cosine and rel_err of the noiseless LoRAs against the (noisy) held-out LoRAs, on the
    same held-out identities (the first `limit`) and with the same metrics as `evaluate`."""
    true, _, ids = dataset.load("heldout")
    if len(true) == 0:
        raise HypernetError(f"{dataset.path} has no held-out identities; build it with --heldout above 0")
    true, ids = true[:limit], ids[:limit]
    return compare(read_truth(source, ids, dataset), true, dataset.layout)
