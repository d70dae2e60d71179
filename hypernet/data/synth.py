"""`python -m hypernet synth`: a synthetic collection of identity LoRAs with known ground truth.

What it is: a test bed where the LoRA is a known smooth function of the identity embedding.
Each identity gets an embedding drawn uniformly on the unit sphere in 512-d. A fixed random
projection maps it to `manifold_dim` coordinates z, smooth features [sin z, cos z] of those
feed a fixed random linear map to every module's up and down factors (plus a fixed base), and
per-identity Gaussian noise (`noise`, relative to the factor scale) is added. The LoRAs thus
lie near a `manifold_dim`-dimensional manifold, and delta W entries are about 1e-3 in size, as
in trained SDXL LoRAs. The files are real kohya files in the builder's input format:

    OUT/synth.json                     what was generated (layout, seed, manifold_dim, noise)
    OUT/id-00000/lora.safetensors      kohya LoRA; factors mixed by a random invertible r x r
                                       matrix and a random alpha, so readers must canonicalise
    OUT/id-00000/embedding.safetensors tensor `embedding` float32 [512], L2-normalised; metadata
                                       `embedding_model` (--embedding-model, a label only)
    OUT/id-00000/global.safetensors    only with --global-dim G: tensor `embedding` float32 [G],
                                       L2-normalised, standing in for global image features (CLIP);
                                       metadata `embedding_model` (--global-model, a label only)

Global vectors (--global-dim G) are drawn uniformly on the unit sphere in G-d, independently of
the face embeddings. With `--depends face` (the default) the LoRAs ignore them: the collection
is the same as without --global-dim, plus the global files. With `--depends face+global` the
manifold has `manifold_dim` coordinates from the face and `manifold_dim` from the global vector
(a second fixed projection), and the features of both feed the random linear map, so each
source explains about half of the LoRA's variation around the base.

A family of generators (issue 19; knobs in synth_family.py): the dependence of the factors on
the embedding (sincos, linear, linear-delta, fourier), the factor scale, the alpha written into
the files, and through the layout the rank and module count; `noise`, `manifold_dim` and the
identity count are the knobs above. Every knob at its default is today's `synth`, file for file.
With `truth`, each identity folder also holds truth.safetensors, its noiseless LoRA:

    OUT/id-00000/truth.safetensors     kohya LoRA, alpha = rank, factors before noise and mixing

What it is not: real identity LoRAs or real face embeddings. It shows whether the pipeline can
learn a smooth embedding -> LoRA map and recover it on held-out identities; numbers measured on
it say nothing about image quality or identity fidelity on real faces.

Memory: the random linear map is never held whole (D x 2*manifold_dim floats would be 740 MB
for sdxl-attn-r4): it is regenerated module by module from seeded generators for each group of
identities, and a group holds about 256 MB of LoRA values (32 sdxl-attn-r4 identities: about
8 s and 0.7 GB above the interpreter's own memory on a 2-core CPU).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..common.tensors import l2_normalize, seeded_generator
from ..errors import HypernetError
from ..common.files import save_safetensors_atomic
from .identity_folders import TRUTH_FILE
from .synth_family import DEFAULT_FREQUENCY, check_family, dependence_features, module_alpha
from ..lora.layout import Layout
from ..lora.lora_io import write_lora
from ..lora.vectorize import module_slices, unflatten
from ..lora.weights import LoraWeights, ModuleWeights

EMBEDDING_DIM = 512
EMBEDDING_MODEL = "synthetic-uniform-sphere-512"
GLOBAL_MODEL = "synthetic-global-sphere"
DEPENDS = ("face", "face+global")
DELTA_SCALE = 1e-3  # typical size of a delta W entry
GROUP_BYTES = 256 * 2**20


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; the fields after `noise` are the family's knobs (synth_family.py)."""

    seed: int = 0
    manifold_dim: int = 16
    noise: float = 0.05
    dependence: str = "sincos"
    frequency: float = DEFAULT_FREQUENCY  # only for dependence "fourier"
    factor_scale: float | None = None  # None: per rank, so that delta W entries are about 1e-3
    alpha: str = "random"

    def family(self) -> dict:
        """The family knobs that differ from today's `synth` (empty for today's `synth`)."""
        default = SynthSpec()
        knobs = {"dependence": self.dependence, "factor_scale": self.factor_scale, "alpha": self.alpha}
        if self.dependence == "fourier":
            knobs["frequency"] = self.frequency
        return {k: v for k, v in knobs.items() if k == "frequency" or v != getattr(default, k)}

    def describe(self) -> dict:
        """synth.json's description: today's three fields, plus the family knobs that differ."""
        return {"seed": self.seed, "manifold_dim": self.manifold_dim, "noise": self.noise, **self.family()}


def synth_embeddings(count: int, seed: int) -> torch.Tensor:
    """[count, 512] uniform on the unit sphere."""
    return l2_normalize(torch.randn(count, EMBEDDING_DIM, generator=seeded_generator(seed, "embeddings")))


def synth_global_vectors(count: int, dim: int, seed: int) -> torch.Tensor:
    """[count, dim] uniform on the unit sphere, independent of the face embeddings."""
    return l2_normalize(torch.randn(count, dim, generator=seeded_generator(seed, "global-embeddings")))


def manifold_features(embeddings: torch.Tensor, spec: SynthSpec, purpose: str = "projection") -> torch.Tensor:
    """[n, F] smooth features of the embeddings' manifold coordinates ([sin z, cos z] for today's
    `synth`, F = 2 * manifold_dim; other dependences: synth_family.dependence_features)."""
    projection = torch.randn(embeddings.shape[1], spec.manifold_dim, generator=seeded_generator(spec.seed, purpose))
    z = embeddings.float() @ projection  # each coordinate ~ N(0, 1) for unit embeddings
    if spec.dependence != "sincos":
        return dependence_features(z, spec.dependence, spec.frequency, spec.seed, purpose)
    return torch.cat([torch.sin(z), torch.cos(z)], dim=1)


def _factor_scale(rank: int) -> float:
    # base + map term have variance about 1.5; delta W entry variance = rank * (1.5 sigma^2)^2.
    return math.sqrt(DELTA_SCALE / (1.5 * math.sqrt(rank)))


def synth_vectors(features: torch.Tensor, layout: Layout, spec: SynthSpec,
                  noise_generators: list[torch.Generator], truth: torch.Tensor | None = None) -> torch.Tensor:
    """The identities' LoRAs [n, D] (with their per-identity noise) of a group of identities'
    features, in the flat layout order (alpha = rank; the factors are random, not canonical:
    `unflatten` turns a row into a LoRA). `truth` [n, D], when given, receives the noiseless LoRAs."""
    out = torch.empty(features.shape[0], layout.num_values)
    for s, m in zip(module_slices(layout), layout.modules):
        gen = seeded_generator(spec.seed, "module", m.name)
        sigma = _factor_scale(m.rank) if spec.factor_scale is None else spec.factor_scale
        base = torch.randn(m.size, generator=gen)
        mapping = torch.randn(features.shape[1], m.size, generator=gen) / math.sqrt(features.shape[1])
        if spec.dependence == "linear-delta":
            mapping[:, m.up_size:] = 0  # fixed down factors: delta W linear in the features
        for i, noise_gen in enumerate(noise_generators):
            # one identity at a time: a batched matmul may round differently for other group sizes
            values = (base + features[i] @ mapping) * sigma
            if truth is not None:
                truth[i, s.start:s.stop] = values
            out[i, s.start:s.stop] = values + spec.noise * sigma * torch.randn(m.size, generator=noise_gen)
    return out


def mix_factors(weights: LoraWeights, gen: torch.Generator, alphas: dict[str, float | None] | None = None
                ) -> LoraWeights:
    """Same delta W per module, other factors: up M^-1 (rank/alpha), M down, with random M and
    alpha (or the module's alpha in `alphas`, where it is not None)."""
    mixed = {}
    for name, m in weights.items():
        r = m.rank
        q, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
        mix = q * torch.exp(torch.rand(r, generator=gen, dtype=torch.float64) - 0.5)  # well-conditioned
        alpha = float([1.0, r / 2, r, 2 * r][int(torch.randint(4, (1,), generator=gen))])
        if alphas is not None and alphas.get(name) is not None:
            alpha = alphas[name]
        up = torch.linalg.solve(mix.T, m.up_matrix().double().T).T * (m.alpha / alpha)
        down = mix @ m.down_matrix().double()
        mixed[name] = ModuleWeights(up.float().reshape(m.up.shape), down.float().reshape(m.down.shape), alpha)
    return LoraWeights(mixed)


def _check_arguments(count: int, spec: SynthSpec, global_dim: int, depends: str) -> None:
    if count < 1:
        raise HypernetError(f"--identities must be at least 1, not {count}")
    if spec.manifold_dim < 1 or spec.noise < 0:
        raise HypernetError("--manifold-dim must be at least 1 and --noise not negative")
    check_family(spec.dependence, spec.frequency, spec.factor_scale, spec.alpha)
    if global_dim < 0 or depends not in DEPENDS:
        raise HypernetError(f"--global-dim must not be negative and --depends one of {DEPENDS}, not {depends!r}")
    if depends == "face+global" and global_dim == 0:
        raise HypernetError("--depends face+global needs global vectors: give --global-dim")


def _write_identity(folder: Path, lora: LoraWeights, base_model: str, spec: SynthSpec, index: int,
                    embedding: torch.Tensor, embedding_model: str,
                    global_vector: torch.Tensor | None, global_model: str, truth: LoraWeights | None = None) -> None:
    """One identity folder in the builder's input format (plus the noiseless LoRA, when given)."""
    folder.mkdir(exist_ok=True)
    metadata = {"synth_seed": str(spec.seed), "synth_identity": str(index),
                "synth_manifold_dim": str(spec.manifold_dim), "synth_noise": str(spec.noise)}
    if spec.family():  # today's `synth` files carry exactly today's metadata
        metadata["synth_family"] = json.dumps(spec.family(), sort_keys=True)
    write_lora(folder / "lora.safetensors", lora, base_model=base_model, metadata=metadata)
    if truth is not None:
        write_lora(folder / TRUTH_FILE, truth, base_model=base_model,
                   metadata={**metadata, "synth_truth": "noiseless LoRA of this identity"})
    save_safetensors_atomic({"embedding": embedding.clone()}, folder / "embedding.safetensors",
                            {"embedding_model": embedding_model})
    if global_vector is not None:
        save_safetensors_atomic({"embedding": global_vector.clone()}, folder / "global.safetensors",
                                {"embedding_model": global_model})


def write_synth(out: str | Path, layout: Layout, count: int, spec: SynthSpec = SynthSpec(),
                progress: bool = True, embedding_model: str = EMBEDDING_MODEL, global_dim: int = 0,
                depends: str = "face", global_model: str = GLOBAL_MODEL, truth: bool = False) -> list[Path]:
    """Write `count` identity folders under `out`; returns their paths.

    With `truth`, each folder also gets truth.safetensors: the identity's noiseless LoRA (alpha =
    rank, factors not mixed), which the dataset builder ignores and `evaluate --truth` reads to
    measure the noise floor. The rank and module count are the layout's (synth_family.family_layout).

    `embedding_model` labels the embeddings (a face model's name lets a hypernet trained on
    them be used with that model's Face Embed output, e.g. in demos). `global_dim` > 0 adds
    global vectors labelled `global_model`; `depends` says whether the LoRAs depend on them.
    """
    _check_arguments(count, spec, global_dim, depends)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = {"layout": layout.to_dict(), "identities": count, "embedding_model": embedding_model, **spec.describe()}
    if truth:
        info["truth_file"] = TRUTH_FILE
    if global_dim:  # collections without global vectors are described exactly as before
        info.update(global_dim=global_dim, global_model=global_model, depends=depends)
    (out / "synth.json").write_text(json.dumps(info, indent=1))
    embeddings = synth_embeddings(count, spec.seed)
    features = manifold_features(embeddings, spec)
    global_vectors = synth_global_vectors(count, global_dim, spec.seed) if global_dim else None
    if depends == "face+global":
        features = torch.cat([features, manifold_features(global_vectors, spec, "global-projection")], dim=1)
    group = max(1, GROUP_BYTES // (4 * layout.num_values * (2 if truth else 1)))
    alphas = {m.name: module_alpha(spec.alpha, spec.seed, m.name, m.rank) for m in layout.modules}
    folders = []
    with tqdm(total=count, desc="synth LoRAs", unit="identity", disable=not progress) as bar:
        for start in range(0, count, group):
            ids = range(start, min(count, start + group))
            gens = [seeded_generator(spec.seed, "identity", i) for i in ids]
            noiseless = torch.empty(len(ids), layout.num_values) if truth else None
            noisy = synth_vectors(features[start:start + len(ids)], layout, spec, gens, noiseless)
            for k, (i, vector, gen) in enumerate(zip(ids, noisy, gens)):
                folder = out / f"id-{i:05d}"
                _write_identity(folder, mix_factors(unflatten(vector, layout), gen, alphas), layout.base_model, spec,
                                i, embeddings[i], embedding_model,
                                None if global_vectors is None else global_vectors[i], global_model,
                                None if noiseless is None else unflatten(noiseless[k], layout))
                folders.append(folder)
                bar.update()
    return folders
