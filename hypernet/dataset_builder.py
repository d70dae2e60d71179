"""`python -m hypernet dataset`: build a training dataset from a folder of identity folders.

Input format (a public contract; `python -m hypernet synth` writes it too):

    SRC/
      <identity id>/                 one folder per person; the folder name is the identity id
        <anything>.safetensors       exactly one LoRA file (any key format lora_io reads)
        *.jpg|*.jpeg|*.png|*.webp|*.bmp   reference photos, embedded with the face model, or
        embedding.safetensors        instead of photos: tensor `embedding`, float32 [512] or
                                     [k, 512] (k photos' embeddings). Optional metadata
                                     `embedding_model` names the model that made it.

Files directly in SRC and folders whose names start with "." are ignored. When a folder has
both, embedding.safetensors wins and its photos are not read. Several embeddings of one
identity (photos or rows) are each L2-normalised, averaged and normalised again.

Each LoRA's UNet modules (text-encoder modules are dropped: the hypernet patches the MODEL
only) are canonicalised and flattened to the dataset layout: `--layout` (preset or JSON file),
or else the layout of the first usable LoRA, in identity order, with alpha = rank. Folders
that cannot be used (no LoRA, two LoRAs, an unreadable photo, no face, a LoRA of another
layout, NaN weights, ...) are reported, listed in the manifest's "skipped", and left out.

Resuming: each identity's vector and embedding is cached in OUT/.work/<id>.safetensors with a
key over its source files' SHA-256, the layout and the embedding model; a re-run reuses the
caches whose key still matches, and then writes the shards and manifest anew.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Union

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from .dataset import DatasetRecord, mean_embedding, write_dataset
from .errors import HypernetError
from .files import save_safetensors_atomic
from .layout import Layout, load_layout
from .lora_io import LoraWeights, guess_base_model, layout_from_lora, read_lora
from .vectorize import flatten

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
EMBEDDING_FILE = "embedding.safetensors"
EMBEDDING_DIM = 512
WORK_DIR = ".work"
UNSPECIFIED_MODEL = "unspecified"


class FaceEmbedderLike(Protocol):
    """What the builder needs from a face model (hypernet.face.ArcFaceEmbedder provides it)."""

    name: str

    def embed_file(self, path: Path) -> np.ndarray:
        """float32 [512] embedding of the largest face in the image; HypernetError if there is none."""


EmbedderSource = Union[FaceEmbedderLike, Callable[[], FaceEmbedderLike], None]


@dataclass
class IdentityFolder:
    id: str
    path: Path
    loras: list[Path]
    photos: list[Path]
    embedding_file: Path | None

    @property
    def needs_face_model(self) -> bool:
        return self.embedding_file is None and bool(self.photos)


@dataclass
class BuildResult:
    path: Path
    layout: Layout
    embedding_model: str
    kept: list[str]
    reused: int
    skipped: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"kept {len(self.kept)} identities ({self.reused} from the cache of an earlier run), "
                 f"skipped {len(self.skipped)}; layout {self.layout.fingerprint}: {len(self.layout)} modules, "
                 f"{self.layout.num_values:,} values; embeddings: {self.embedding_model}"]
        for reason, count in Counter(s["kind"] for s in self.skipped).most_common():
            lines.append(f"  skipped {count}: {reason}")
        return "\n".join(lines)


def scan_source(src: Path) -> list[IdentityFolder]:
    if not src.is_dir():
        raise HypernetError(f"source folder {src} does not exist")
    folders = []
    for path in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in path.iterdir() if p.is_file())
        embedding = path / EMBEDDING_FILE
        folders.append(IdentityFolder(
            path.name, path,
            loras=[f for f in files if f.suffix == ".safetensors" and f.name != EMBEDDING_FILE],
            photos=[f for f in files if f.suffix.lower() in PHOTO_SUFFIXES],
            embedding_file=embedding if embedding.is_file() else None))
    if not folders:
        raise HypernetError(f"{src} holds no identity folders (one folder per person with a LoRA and photos)")
    return folders


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Skip(Exception):
    """An identity folder that cannot be used: `kind` groups the summary, the message explains."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _embedding_file_model(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("embedding_model")
    except Exception:  # an unreadable file is reported when the identity is processed
        return None


def _read_embedding_file(path: Path) -> torch.Tensor:
    try:
        with safe_open(str(path), framework="pt") as f:
            if "embedding" not in f.keys():
                raise _Skip("bad embedding file", f"{path} has no tensor named 'embedding'")
            emb = f.get_tensor("embedding").float()
    except _Skip:
        raise
    except Exception as exc:  # safetensors' own error types
        raise _Skip("bad embedding file", f"{path} cannot be read: {exc}") from exc
    if emb.dim() not in (1, 2) or emb.shape[-1] != EMBEDDING_DIM or emb.numel() == 0:
        raise _Skip("bad embedding file", f"{path}: 'embedding' has shape {list(emb.shape)}, not [512] or [k, 512]")
    if not torch.isfinite(emb).all():
        raise _Skip("bad embedding file", f"{path}: 'embedding' has NaN or Inf values")
    try:
        return mean_embedding(emb)
    except HypernetError as exc:
        raise _Skip("bad embedding file", f"{path}: {exc}") from exc


def _embed_photos(folder: IdentityFolder, embedder: FaceEmbedderLike) -> torch.Tensor:
    rows = []
    for i, photo in enumerate(folder.photos, 1):
        try:
            rows.append(torch.as_tensor(np.asarray(embedder.embed_file(photo), dtype=np.float32)))
        except (ValueError, OSError) as exc:  # HypernetError is a ValueError: no face, unreadable image
            raise _Skip("photo without a usable face", f"photo {i} of {len(folder.photos)} ({photo.name}): {exc}") from exc
    return mean_embedding(torch.stack(rows))


class _Builder:
    def __init__(self, src: Path, work: Path, layout: Layout | None, embedder: FaceEmbedderLike | None, model_name: str):
        self.src, self.work, self.layout, self.embedder, self.model_name = src, work, layout, embedder, model_name

    def sources(self, folder: IdentityFolder) -> list[dict]:
        files = folder.loras + ([folder.embedding_file] if folder.embedding_file else folder.photos)
        return [{"file": f.relative_to(self.src).as_posix(), "sha256": sha256_file(f)} for f in files]

    def cache_key(self, sources: list[dict]) -> str:
        return hashlib.sha256(json.dumps([sources, self.layout.to_dict(), self.model_name]).encode()).hexdigest()

    def process(self, folder: IdentityFolder) -> tuple[DatasetRecord, bool]:
        """The identity's record and whether its cache was reused; _Skip when it cannot be used."""
        if not folder.loras:
            raise _Skip("no LoRA file", "no .safetensors LoRA file in the folder")
        if len(folder.loras) > 1:
            raise _Skip("more than one LoRA file", f"{len(folder.loras)} LoRA files "
                        f"({', '.join(f.name for f in folder.loras)}); keep exactly one per identity")
        if folder.embedding_file is None and not folder.photos:
            raise _Skip("no photos or embedding", f"no reference photos and no {EMBEDDING_FILE}")
        if folder.embedding_file is not None:
            named = _embedding_file_model(folder.embedding_file)
            if named is not None and self.model_name not in (named, UNSPECIFIED_MODEL):
                raise _Skip("embedding from another model", f"{EMBEDDING_FILE} was made by {named!r}, "
                            f"this dataset's embeddings by {self.model_name!r}")
        sources = self.sources(folder)
        lora_file, lora_sha = sources[0]["file"], sources[0]["sha256"]
        weights = None
        if self.layout is None:
            weights = self._read(folder.loras[0])
            self.layout = _canonical_layout(layout_from_lora(weights, guess_base_model(weights)))
        key = self.cache_key(sources)
        cache = self.work / f"{folder.id}.safetensors"
        if _cache_key(cache) == key:
            return self._record(folder.id, cache, lora_file, lora_sha, sources), True
        if weights is None:
            weights = self._read(folder.loras[0])
        try:
            vector = flatten(weights, self.layout, source=str(folder.loras[0]))
        except HypernetError as exc:
            raise _Skip("LoRA of another layout", str(exc)) from exc
        embedding = (_read_embedding_file(folder.embedding_file) if folder.embedding_file
                     else _embed_photos(folder, self.embedder))
        save_safetensors_atomic({"vector": vector, "embedding": embedding}, cache, {"key": key})
        return self._record(folder.id, cache, lora_file, lora_sha, sources), False

    @staticmethod
    def _read(path: Path) -> LoraWeights:
        try:
            weights = read_lora(path).unet_only()
        except HypernetError as exc:
            raise _Skip("unreadable or broken LoRA", str(exc)) from exc
        if not weights:
            raise _Skip("LoRA without UNet modules", f"{path} has only text-encoder modules")
        return weights

    @staticmethod
    def _record(id: str, cache: Path, lora_file: str, lora_sha: str, sources: list[dict]) -> DatasetRecord:
        def tensors():
            with safe_open(str(cache), framework="pt") as f:
                return f.get_tensor("vector"), f.get_tensor("embedding")
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


def _resolve_embedder(folders: list[IdentityFolder], face_embedder: EmbedderSource) -> FaceEmbedderLike | None:
    needing = [f.id for f in folders if f.needs_face_model]
    if not needing:
        return None
    if face_embedder is None:
        raise HypernetError(f"{len(needing)} identity folders hold photos but no {EMBEDDING_FILE} "
                            f"(e.g. {', '.join(needing[:3])}): pass --face-model DIR, an insightface model folder "
                            "such as models/insightface/models/antelopev2")
    return face_embedder if hasattr(face_embedder, "embed_file") else face_embedder()


def build_dataset(src: str | os.PathLike, out: str | os.PathLike, *, layout: Layout | None = None,
                  heldout: float = 0.1, seed: int = 0, face_embedder: EmbedderSource = None,
                  progress: bool = True) -> BuildResult:
    """Build (or update) the dataset in `out` from identity folders in `src`.

    `face_embedder` is an embedder or a zero-argument factory; it is used (and a factory called)
    only when some folder has photos and no embedding.safetensors.
    """
    src, out = Path(src), Path(out)
    folders = scan_source(src)
    embedder = _resolve_embedder(folders, face_embedder)
    if embedder is not None:
        model_name = embedder.name
    else:
        named = [_embedding_file_model(f.embedding_file) for f in folders if f.embedding_file]
        model_name = next((n for n in named if n), UNSPECIFIED_MODEL)
    builder = _Builder(src, out / WORK_DIR, layout, embedder, model_name)
    builder.work.mkdir(parents=True, exist_ok=True)
    records, skipped, reused = [], [], 0
    for folder in tqdm(folders, desc="identities", unit="identity", disable=not progress):
        try:
            record, from_cache = builder.process(folder)
        except _Skip as skip:
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
    write_dataset(out, builder.layout, model_name, records, heldout, seed, skipped)
    return BuildResult(out, builder.layout, model_name, [r.id for r in records], reused, skipped)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--src", required=True, type=Path, help="folder of identity folders (see module docs)")
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument("--layout", help="layout preset or JSON file (default: the first usable LoRA's layout)")
    parser.add_argument("--heldout", type=float, default=0.1, help="fraction of identities held out for evaluation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/held-out split")
    parser.add_argument("--face-model", type=Path, help="insightface model folder, needed when folders hold photos")


def run(args: argparse.Namespace) -> int:
    layout = load_layout(args.layout) if args.layout else None

    def arcface():
        from .face import ArcFaceEmbedder
        return ArcFaceEmbedder(args.face_model)

    result = build_dataset(args.src, args.out, layout=layout, heldout=args.heldout, seed=args.seed,
                           face_embedder=arcface if args.face_model else None)
    print(result.summary())
    print(f"dataset written to {result.path}")
    return 0
