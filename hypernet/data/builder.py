"""`python -m hypernet dataset`: build a training dataset from a folder of identity folders.

Input format (a public contract; `python -m hypernet synth` writes it too):

    SRC/
      <identity id>/                 one folder per person; the folder name is the identity id
        <anything>.safetensors       exactly one LoRA file (any key format lora_io reads)
        *.jpg|*.jpeg|*.png|*.webp|*.bmp   reference photos, embedded with the face model, or
        embedding.safetensors        instead of photos: tensor `embedding`, float32 [512] or
                                     [k, 512] (k photos' embeddings). Optional metadata
                                     `embedding_model` names the model that made it.
        global.safetensors           optional global image features (DiffLoRA's CLIP image
                                     features): tensor `embedding`, float32 [G] or [k, G];
                                     metadata `embedding_model` names the encoder and optional
                                     `encoder_fingerprint` its weights (absent: "synthetic").
        truth.safetensors            ignored, not the identity's LoRA: a synthetic collection's
                                     noiseless LoRA (written by synth --truth)

Files directly in SRC and folders whose names start with "." are ignored. When a folder has
both, embedding.safetensors wins and its photos are not read. Several embeddings of one
identity (photos or rows) are each L2-normalised, averaged and normalised again.

Global image features go into the dataset in one of two ways, for every identity or none:
with `--global-encoder FILE --global-arch NAME` they are computed from each identity's photos
with that open_clip image encoder (hypernet.encoders.global_features; global.safetensors files
are then not read); without it, they are read from global.safetensors when every identity
folder has one (a mix is an error). The manifest records the encoder's identity (name, dim,
fingerprint), which training and sampling check.

Each LoRA's UNet modules (text-encoder modules are dropped: the hypernet patches the MODEL
only) are canonicalised and flattened to the dataset layout: `--layout` (preset or JSON file),
or else the layout of the first usable LoRA, in identity order, with alpha = rank. Folders
that cannot be used (no LoRA, two LoRAs, an unreadable photo, no face, a LoRA of another
layout, NaN weights, ...) are reported, listed in the manifest's "skipped", and left out.

Modules: identity_folders scans SRC and reads the embedding files, condition_sources turns
photos or files into conditions, this module runs the loop and the cache.

Resuming: each identity's vector and embeddings are cached in OUT/.work/<id>.safetensors with a
key over its source files' SHA-256, the layout, the embedding model and the global encoder; a
re-run reuses the caches whose key still matches, and then writes the shards and manifest anew.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from tqdm import tqdm

from ..common.files import save_safetensors_atomic, sha256_file
from ..encoders.encoder_info import EncoderInfo
from ..errors import HypernetError
from ..lora.layout import Layout
from ..lora.lora_io import guess_base_model, layout_from_lora, read_lora
from ..lora.vectorize import flatten
from ..lora.weights import LoraWeights
from .condition_sources import (EmbedderSource, FaceEmbedderLike, GlobalEncoderSource, GlobalPlan, embed_photos,
                                global_plan, resolve_embedder)
from .dataset import DatasetRecord, write_dataset
from .identity_folders import (EMBEDDING_FILE, UNSPECIFIED_MODEL, IdentityFolder, Skip, embedding_file_model,
                               read_embedding_file, scan_source)

WORK_DIR = ".work"


@dataclass
class BuildResult:
    path: Path
    layout: Layout
    embedding_model: str
    kept: list[str]
    reused: int
    skipped: list[dict] = field(default_factory=list)
    global_encoder: dict | None = None

    def summary(self) -> str:
        lines = [f"kept {len(self.kept)} identities ({self.reused} from the cache of an earlier run), "
                 f"skipped {len(self.skipped)}; layout {self.layout.fingerprint}: {len(self.layout)} modules, "
                 f"{self.layout.num_values:,} values; embeddings: {self.embedding_model}"
                 + (f"; global features: {EncoderInfo.from_dict(self.global_encoder).describe()}"
                    if self.global_encoder else "")]
        for reason, count in Counter(s["kind"] for s in self.skipped).most_common():
            lines.append(f"  skipped {count}: {reason}")
        return "\n".join(lines)


class _Builder:
    def __init__(self, src: Path, work: Path, layout: Layout | None, embedder: FaceEmbedderLike | None, model_name: str,
                 global_plan: GlobalPlan | None = None):
        self.src, self.work, self.layout, self.embedder, self.model_name = src, work, layout, embedder, model_name
        self.global_plan = global_plan

    def sources(self, folder: IdentityFolder) -> list[dict]:
        files = folder.loras + ([folder.embedding_file] if folder.embedding_file else folder.photos)
        if self.global_plan is not None:
            files += [f for f in self.global_plan.sources(folder) if f not in files]
        return [{"file": f.relative_to(self.src).as_posix(), "sha256": sha256_file(f)} for f in files]

    def cache_key(self, sources: list[dict]) -> str:
        parts = [sources, self.layout.to_dict(), self.model_name]
        if self.global_plan is not None:  # face-only keys stay as they were: old caches are reused
            parts.append(self.global_plan.info.to_dict())
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def process(self, folder: IdentityFolder) -> tuple[DatasetRecord, bool]:
        """The identity's record and whether its cache was reused; Skip when it cannot be used."""
        if not folder.loras:
            raise Skip("no LoRA file", "no .safetensors LoRA file in the folder")
        if len(folder.loras) > 1:
            raise Skip("more than one LoRA file", f"{len(folder.loras)} LoRA files "
                        f"({', '.join(f.name for f in folder.loras)}); keep exactly one per identity")
        if folder.embedding_file is None and not folder.photos:
            raise Skip("no photos or embedding", f"no reference photos and no {EMBEDDING_FILE}")
        if folder.embedding_file is not None:
            named = embedding_file_model(folder.embedding_file)
            if named is not None and self.model_name not in (named, UNSPECIFIED_MODEL):
                raise Skip("embedding from another model", f"{EMBEDDING_FILE} was made by {named!r}, "
                            f"this dataset's embeddings by {self.model_name!r}")
        sources = self.sources(folder)
        lora_file, lora_sha = sources[0]["file"], sources[0]["sha256"]
        weights = None
        if self.layout is None:
            weights = self._read(folder.loras[0])
            self.layout = _canonical_layout(layout_from_lora(weights, guess_base_model(weights)))
        key = self.cache_key(sources)
        cache = self.work / f"{folder.id}.safetensors"
        has_global = self.global_plan is not None
        if _cache_key(cache) == key:
            return self._record(folder.id, cache, lora_file, lora_sha, sources, has_global), True
        if weights is None:
            weights = self._read(folder.loras[0])
        try:
            vector = flatten(weights, self.layout, source=str(folder.loras[0]))
        except HypernetError as exc:
            raise Skip("LoRA of another layout", str(exc)) from exc
        embedding = (read_embedding_file(folder.embedding_file) if folder.embedding_file
                     else embed_photos(folder, self.embedder))
        tensors = {"vector": vector, "embedding": embedding}
        if has_global:
            tensors["global_embedding"] = self.global_plan.features(folder)
        save_safetensors_atomic(tensors, cache, {"key": key})
        return self._record(folder.id, cache, lora_file, lora_sha, sources, has_global), False

    @staticmethod
    def _read(path: Path) -> LoraWeights:
        try:
            weights = read_lora(path).unet_only()
        except HypernetError as exc:
            raise Skip("unreadable or broken LoRA", str(exc)) from exc
        if not weights:
            raise Skip("LoRA without UNet modules", f"{path} has only text-encoder modules")
        return weights

    @staticmethod
    def _record(id: str, cache: Path, lora_file: str, lora_sha: str, sources: list[dict],
                has_global: bool = False) -> DatasetRecord:
        names = ("vector", "embedding") + (("global_embedding",) if has_global else ())

        def tensors():  # (vector, embedding) or (vector, embedding, global_embedding)
            with safe_open(str(cache), framework="pt") as f:
                return tuple(f.get_tensor(n) for n in names)
        return DatasetRecord(id, tensors, lora_file, lora_sha, sources)


def _canonical_layout(layout: Layout) -> Layout:
    return Layout(tuple(m.with_rank(m.rank) for m in layout.modules), layout.base_model)


def _cache_key(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("key")
    except Exception:  # a damaged cache is rebuilt
        return None


def build_dataset(src: str | os.PathLike, out: str | os.PathLike, *, layout: Layout | None = None,
                  heldout: float = 0.1, seed: int = 0, face_embedder: EmbedderSource = None,
                  global_encoder: GlobalEncoderSource = None, progress: bool = True) -> BuildResult:
    """Build (or update) the dataset in `out` from identity folders in `src`.

    `face_embedder` is an embedder or a zero-argument factory; it is used (and a factory called)
    only when some folder has photos and no embedding.safetensors. `global_encoder` (an image
    encoder or a factory) computes global features from every identity's photos; without it
    they are read from global.safetensors files when every folder has one.
    """
    src, out = Path(src), Path(out)
    folders = scan_source(src)
    plan = global_plan(folders, global_encoder)
    embedder = resolve_embedder(folders, face_embedder)
    if embedder is not None:
        model_name = embedder.name
    else:
        named = [embedding_file_model(f.embedding_file) for f in folders if f.embedding_file]
        model_name = next((n for n in named if n), UNSPECIFIED_MODEL)
    builder = _Builder(src, out / WORK_DIR, layout, embedder, model_name, plan)
    builder.work.mkdir(parents=True, exist_ok=True)
    records, skipped, reused = [], [], 0
    for folder in tqdm(folders, desc="identities", unit="identity", disable=not progress):
        try:
            record, from_cache = builder.process(folder)
        except Skip as skip:
            skipped.append({"id": folder.id, "kind": skip.kind, "reason": str(skip)})
            tqdm.write(f"skipped {folder.id}: {skip}")
            continue
        records.append(record)
        reused += from_cache
    for stale in builder.work.glob("*.safetensors"):
        if stale.stem not in {f.id for f in folders}:
            stale.unlink()
    if not records:
        reasons = "; ".join(f"{s['id']}: {s['reason']}" for s in skipped[:3])
        raise HypernetError(f"no identity folder in {src} could be used ({len(skipped)} skipped, e.g. {reasons})")
    if heldout > 0 and len(records) < 2:
        raise HypernetError(f"only {len(records)} usable identity in {src}: a held-out split needs at least 2 "
                            "(add identities or pass --heldout 0)")
    global_info = plan.info.to_dict() if plan is not None else None
    # A face-only dataset is written exactly as before (no global_encoder argument at all).
    extra = {"global_encoder": global_info} if global_info is not None else {}
    write_dataset(out, builder.layout, model_name, records, heldout, seed, skipped, **extra)
    return BuildResult(out, builder.layout, model_name, [r.id for r in records], reused, skipped, global_info)
