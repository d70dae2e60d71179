"""Small synthetic datasets and training configs that train in about a second."""
from __future__ import annotations

from pathlib import Path

from hypernet.data.builder import build_dataset
from hypernet.lora.layout import Layout
from hypernet.lora.presets import preset
from hypernet.data.synth import SynthSpec, write_synth
from hypernet.pipeline.train_config import TrainConfig, load_train_config

SMALL_LAYOUT = Layout(preset("tiny-attn-r4").modules[:6], "sdxl")


def make_dataset(folder: Path, identities: int = 24, heldout: float = 0.25, layout: Layout = SMALL_LAYOUT,
                 seed: int = 0) -> Path:
    write_synth(folder / "collection", layout, identities, SynthSpec(seed=seed), progress=False)
    build_dataset(folder / "collection", folder / "data", heldout=heldout, progress=False)
    return folder / "data"


def quick_config(**overrides) -> TrainConfig:
    base = load_train_config("tiny").to_dict()
    base.update(ae_steps=12, prior_steps=12, checkpoint_every=5, warmup_steps=2)
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return TrainConfig.from_dict(base)
