"""The methods evaluate-images compares: each gives one LoRA per held-out identity (or none, for
the base model) and the seconds it took to make it.

The ones that train (per-identity LoRA, hypernet + Refine) do so through the renderer, the
ComfyUI side, which trains on the same MODEL it draws with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..collect.jobs import LORA_FILE, RECORD_FILE
from ..common.files import read_json_object
from ..data.identity_folders import NOT_LORAS
from ..errors import HypernetError
from ..lora.layout import Layout
from ..lora.lora_io import lora_from_state_dict, read_lora
from ..lora.weights import LoraWeights
from .lora_baselines import TrainingIdentities, mean_lora


@dataclass
class HeldOut:
    """One held-out identity: its reference images with their captions, and its embedding."""

    id: str
    folder: Path
    photos: list[Path]
    captions: list[str]
    loras: list[Path] = field(default_factory=list)  # a per-identity trained LoRA already in its folder
    embedding: torch.Tensor | None = None  # mean reference embedding [d]
    embed_seconds: float = 0.0


@dataclass
class Made:
    lora: LoraWeights | None
    seconds: float | None
    note: str | None = None  # where the LoRA came from when it was not made here


class Method:
    name: str
    uses_hypernet = False

    def make(self, identity: HeldOut) -> Made:
        raise NotImplementedError


class BaseModel(Method):
    name = "base"

    def make(self, identity):
        return Made(None, 0.0)


class LoraFolder(Method):
    """LoRAs made elsewhere: DIR/<identity>.safetensors, or the one .safetensors in DIR/<identity>/."""

    def __init__(self, name: str, folder: Path):
        if not folder.is_dir():
            raise HypernetError(f"--lora-dir {name}={folder}: no such folder")
        self.name, self.folder = name, folder

    def make(self, identity):
        single = self.folder / f"{identity.id}.safetensors"
        if single.is_file():
            return Made(read_lora(single), None, single.name)
        inside = self.folder / identity.id
        files = []
        if inside.is_dir():
            files = [inside / LORA_FILE] if (inside / LORA_FILE).is_file() else \
                [p for p in sorted(inside.glob("*.safetensors")) if p.name not in NOT_LORAS]
        if len(files) != 1:
            raise HypernetError(f"method {self.name}: no LoRA for identity {identity.id} in {self.folder} (expected "
                                f"{single.name} or one .safetensors in {inside.name}/)")
        return Made(read_lora(files[0]), _recorded_seconds(files[0].parent), str(files[0].relative_to(self.folder)))


def _recorded_seconds(folder: Path) -> float | None:
    """Training seconds of a LoRA written by collect (its collect.json), else unknown."""
    record = folder / RECORD_FILE
    if not record.is_file():
        return None
    value = read_json_object(record, "collect record").get("train_seconds")
    return float(value) if isinstance(value, (int, float)) else None


class Nearest(Method):
    name = "nearest"

    def __init__(self, training: TrainingIdentities):
        self.training = training

    def make(self, identity):
        started = time.perf_counter()
        index = self.training.nearest(identity.embedding)
        lora = read_lora(self.training.lora_files[index])
        return Made(lora, identity.embed_seconds + time.perf_counter() - started, self.training.ids[index])


class Mean(Method):
    name = "mean"

    def __init__(self, training: TrainingIdentities):
        started = time.perf_counter()
        self.lora = mean_lora(training.lora_files)
        self.seconds = time.perf_counter() - started  # made once; each identity could use it at this cost

    def make(self, identity):
        return Made(self.lora, self.seconds)


class HypernetSampled(Method):
    name = "hypernet"
    uses_hypernet = True

    def __init__(self, model, *, seed: int, steps: int, guidance: float | None):
        self.model, self.seed, self.steps, self.guidance = model, seed, steps, guidance

    def make(self, identity):
        from .sampling import decode_lora, sample_latents
        started = time.perf_counter()
        latent = sample_latents(self.model, identity.embedding[None], seed=self.seed, steps=self.steps,
                                guidance=self.guidance)
        lora = decode_lora(self.model, latent)
        return Made(lora, identity.embed_seconds + time.perf_counter() - started)


class Refine(Method):
    """The hypernet's LoRA, then a few training steps on the references (HyperDreamBooth)."""

    uses_hypernet = True

    def __init__(self, hypernet: HypernetSampled, renderer, *, steps: int, learning_rate: float, seed: int):
        self.hypernet, self.renderer = hypernet, renderer
        self.steps, self.learning_rate, self.seed = steps, learning_rate, seed
        self.name = f"hypernet+refine{steps}"

    def make(self, identity):
        start = self.hypernet.make(identity)
        started = time.perf_counter()
        result = self.renderer.train(identity.photos, identity.captions, self.hypernet.model.layout,
                                     steps=self.steps, learning_rate=self.learning_rate, seed=self.seed,
                                     init_lora=start.lora)
        lora = lora_from_state_dict(result.state_dict, source=f"the refined LoRA of {identity.id}")
        return Made(lora, start.seconds + time.perf_counter() - started)


class Trained(Method):
    """The per-identity trained LoRA (DreamBooth's role, the upper bound): the one collect wrote
    into the identity's folder, else trained here from zero on its references."""

    name = "trained"

    def __init__(self, renderer, layout: Layout | None, *, steps: int, learning_rate: float, seed: int):
        self.renderer, self.layout = renderer, layout
        self.steps, self.learning_rate, self.seed = steps, learning_rate, seed

    def make(self, identity):
        if len(identity.loras) == 1:
            return Made(read_lora(identity.loras[0]), _recorded_seconds(identity.folder), identity.loras[0].name)
        if len(identity.loras) > 1:
            raise HypernetError(f"held-out identity {identity.folder} holds {len(identity.loras)} LoRA files; keep "
                                "one (its trained LoRA) or none (to train it here)")
        if self.layout is None:
            raise HypernetError("the trained method has no layout to train: give --layout, or --hypernet")
        started = time.perf_counter()
        result = self.renderer.train(identity.photos, identity.captions, self.layout, steps=self.steps,
                                     learning_rate=self.learning_rate, seed=self.seed)
        lora = lora_from_state_dict(result.state_dict, source=f"the LoRA trained for {identity.id}")
        return Made(lora, time.perf_counter() - started)
