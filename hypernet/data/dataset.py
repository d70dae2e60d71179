"""The training dataset on disk: canonical LoRA vectors and face embeddings, one row per identity.

A dataset is a directory:

    manifest.json
    shard-00000.safetensors   tensors `vectors` float32 [n, D] (canonical flat LoRAs, not normalised)
    shard-00001.safetensors           `embeddings` float32 [n, E] (L2-normalised)
    ...                               `global_embeddings` float32 [n, G] (L2-normalised; only in
                                      datasets with global image features)

manifest.json:

    {"format": "lora-hypernet-dataset", "version": 1,
     "layout": Layout.to_dict(), "embedding_model": str, "embedding_dim": E,
     "global_encoder": {"name", "dim": G, "fingerprint"}   (only with global image features),
     "identities": [{"id", "split": "train" | "heldout", "shard": "shard-00000.safetensors", "row",
                     "lora_file", "lora_sha256", "sources": [{"file", "sha256"}]}],
     "skipped": [{"id", "reason"}]}

A shard holds rows of one split only, so loading a split reads only its own shards. The
train/held-out split is by identity and deterministic: identities are ranked by a seeded hash
of their id and the lowest-ranked fraction is held out, so adding identities later moves few.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open

from ..errors import HypernetError
from ..common.files import read_json_object, save_safetensors_atomic
from ..encoders.encoder_info import check_encoder_info
from ..lora.layout import Layout

FORMAT = "lora-hypernet-dataset"
VERSION = 1
SPLITS = ("train", "heldout")
MANIFEST = "manifest.json"
DEFAULT_SHARD_BYTES = 512 * 2**20


@dataclass
class DatasetRecord:
    """One identity to write. `tensors()` returns (vector [D], embedding [E]) or, in a dataset
    with global image features, (vector, embedding, global_embedding [G]); it is called once,
    when the row is written, so callers can keep rows on disk until then."""

    id: str
    tensors: Callable[[], tuple[torch.Tensor, ...]]
    lora_file: str = ""
    lora_sha256: str = ""
    sources: list[dict] = field(default_factory=list)

    @classmethod
    def in_memory(cls, id: str, vector: torch.Tensor, embedding: torch.Tensor,
                  global_embedding: torch.Tensor | None = None, **info) -> "DatasetRecord":
        if global_embedding is None:
            return cls(id, lambda: (vector, embedding), **info)
        return cls(id, lambda: (vector, embedding, global_embedding), **info)


def split_identities(ids: Sequence[str], heldout_fraction: float, seed: int) -> dict[str, str]:
    """id -> "train" | "heldout". At least one of each when heldout_fraction > 0."""
    if not 0 <= heldout_fraction < 1:
        raise HypernetError(f"held-out fraction must be in [0, 1), not {heldout_fraction}")
    if len(set(ids)) != len(ids):
        raise HypernetError("identity ids must be unique")
    n_heldout = 0
    if heldout_fraction > 0:
        if len(ids) < 2:
            raise HypernetError(f"{len(ids)} identities are too few for a train/held-out split: need at least 2, "
                                "or use a held-out fraction of 0")
        n_heldout = min(len(ids) - 1, max(1, round(len(ids) * heldout_fraction)))
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    heldout = set(ranked[:n_heldout])
    return {i: "heldout" if i in heldout else "train" for i in ids}


def write_dataset(path: str | os.PathLike, layout: Layout, embedding_model: str, records: Sequence[DatasetRecord],
                  heldout_fraction: float = 0.1, seed: int = 0, skipped: Sequence[dict] = (),
                  max_shard_bytes: int = DEFAULT_SHARD_BYTES, global_encoder: dict | None = None) -> Path:
    """Write shards, then the manifest: a reader sees a complete dataset or none.

    With `global_encoder` (the identity of the image encoder that made them) every record must
    give global image features too; without it, none may.
    Rewriting a dataset directory removes its old manifest first and, at the end, the shards the
    new manifest does not use.
    """
    path = Path(path)
    if not records:
        raise HypernetError(f"no identities to write into dataset {path}")
    if global_encoder is not None:
        global_encoder = check_encoder_info(global_encoder, f"dataset {path}")
    global_dim = global_encoder["dim"] if global_encoder is not None else 0
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)
    records = sorted(records, key=lambda r: r.id)
    splits = split_identities([r.id for r in records], heldout_fraction, seed)
    dim = layout.num_values
    embedding_dim = None
    entries, shard_names = [], []

    def row_of(rec: DatasetRecord) -> tuple[torch.Tensor, ...]:
        tensors = tuple(t.detach().float().reshape(-1) for t in rec.tensors())
        if len(tensors) != (3 if global_dim else 2):
            raise HypernetError(f"identity {rec.id}: " + ("no global image features, but the dataset has them "
                                                          f"({global_encoder['name']})" if global_dim else
                                                          "global image features were given without their encoder"))
        vector, embedding = tensors[:2]
        if vector.numel() != dim:
            raise HypernetError(f"identity {rec.id}: vector has {vector.numel()} values, layout needs {dim}")
        if embedding_dim is not None and embedding.numel() != embedding_dim:
            raise HypernetError(f"identity {rec.id}: embedding has {embedding.numel()} values, others {embedding_dim}")
        if global_dim and tensors[2].numel() != global_dim:
            raise HypernetError(f"identity {rec.id}: global features have {tensors[2].numel()} values, the encoder "
                                f"{global_encoder['name']} gives {global_dim}")
        return tensors

    for split in SPLITS:
        rows = [r for r in records if splits[r.id] == split]
        start = 0
        while start < len(rows):
            first = row_of(rows[start])
            embedding_dim = embedding_dim or first[1].numel()
            chunk = rows[start:start + max(1, max_shard_bytes // (4 * (dim + embedding_dim + global_dim)))]
            # rows go straight into the shard tensors: one shard in memory, not two
            shard = {"vectors": torch.empty(len(chunk), dim), "embeddings": torch.empty(len(chunk), embedding_dim)}
            if global_dim:
                shard["global_embeddings"] = torch.empty(len(chunk), global_dim)
            for i, rec in enumerate(chunk):
                for tensor, row in zip(shard.values(), first if i == 0 else row_of(rec)):
                    tensor[i] = row
            name = f"shard-{len(shard_names):05d}.safetensors"
            save_safetensors_atomic(shard, path / name, {"format": FORMAT, "split": split})
            entries += [{"id": rec.id, "split": split, "shard": name, "row": row, "lora_file": rec.lora_file,
                         "lora_sha256": rec.lora_sha256, "sources": list(rec.sources)} for row, rec in enumerate(chunk)]
            shard_names.append(name)
            start += len(chunk)
    manifest = {"format": FORMAT, "version": VERSION, "layout": layout.to_dict(), "embedding_model": embedding_model,
                "embedding_dim": embedding_dim, "identities": entries, "skipped": list(skipped)}
    if global_encoder is not None:
        manifest["global_encoder"] = global_encoder
    tmp = path / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path / MANIFEST)
    for old in path.glob("shard-*.safetensors"):
        if old.name not in shard_names:
            old.unlink()
    return path


class LoraDataset:
    """A dataset directory opened and checked; rows are read by `load`."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.layout = Layout.from_dict(manifest["layout"])
        self.embedding_model: str = manifest["embedding_model"]
        self.embedding_dim: int = int(manifest["embedding_dim"])
        self.identities: list[dict] = manifest["identities"]
        self.skipped: list[dict] = manifest.get("skipped", [])
        encoder = manifest.get("global_encoder")
        # the identity of the image encoder behind `global_embeddings`; None: the dataset has none
        self.global_encoder: dict | None = None if encoder is None else check_encoder_info(encoder, str(path))

    @property
    def global_dim(self) -> int:
        return self.global_encoder["dim"] if self.global_encoder is not None else 0

    def ids(self, split: str) -> list[str]:
        _check_split(split)
        return [e["id"] for e in self.identities if e["split"] == split]

    def load(self, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(vectors [N, D], embeddings [N, E], ids) of one split, in manifest order."""
        vectors, embeddings = self._rows(split, {"vectors": self.layout.num_values, "embeddings": self.embedding_dim})
        return vectors, embeddings, self.ids(split)

    def load_global(self, split: str) -> torch.Tensor:
        """Global image features [N, G] of one split, in the order of `load`."""
        if self.global_encoder is None:
            raise HypernetError(f"{self.path} has no global image features; rebuild it from identity folders with "
                                "global.safetensors files or with --global-encoder FILE --global-arch NAME")
        return self._rows(split, {"global_embeddings": self.global_dim})[0]

    def _rows(self, split: str, widths: dict[str, int]) -> list[torch.Tensor]:
        entries = [e for e in self.identities if e["split"] == _check_split(split)]
        out = [torch.empty(len(entries), width) for width in widths.values()]
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, e in enumerate(entries):
            by_shard.setdefault(e["shard"], []).append((i, int(e["row"])))
        for shard, rows in by_shard.items():
            with safe_open(str(self.path / shard), framework="pt") as f:
                tensors = [f.get_tensor(key) for key in widths]
            for i, row in rows:
                for target, source in zip(out, tensors):
                    target[i] = source[row]
        return out

    def __repr__(self) -> str:
        return (f"LoraDataset({self.path}, {len(self.ids('train'))} train, {len(self.ids('heldout'))} held out, "
                f"D={self.layout.num_values}, E={self.embedding_dim}"
                + (f", global {self.global_encoder['name']} G={self.global_dim})" if self.global_encoder else ")"))


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise HypernetError(f"unknown split {split!r}; choose one of {SPLITS}")
    return split


def open_dataset(path: str | os.PathLike) -> LoraDataset:
    """Open a dataset directory, checking manifest, shard files and shapes before any row is read."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise HypernetError(f"{path} is not a dataset: it has no {MANIFEST} (build one with `python -m hypernet dataset`)")
    manifest = read_json_object(manifest_path, "dataset manifest fields")
    if manifest.get("format") != FORMAT:
        raise HypernetError(f"{manifest_path} is not a LoRA hypernet dataset manifest (format is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise HypernetError(f"{manifest_path}: dataset version {manifest.get('version')!r} is not supported "
                            f"(this code reads version {VERSION}); rebuild the dataset")
    for key in ("layout", "embedding_model", "embedding_dim", "identities"):
        if key not in manifest:
            raise HypernetError(f"{manifest_path} lacks {key!r}; rebuild the dataset")
    try:
        dataset = LoraDataset(path, manifest)
    except HypernetError as exc:
        raise HypernetError(f"{manifest_path}: invalid manifest ({exc}); rebuild the dataset") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise HypernetError(f"{manifest_path}: invalid manifest ({exc}); rebuild the dataset") from exc
    _check_rows(dataset, manifest_path)
    return dataset


def _check_rows(dataset: LoraDataset, manifest_path: Path) -> None:
    ids = [e.get("id") for e in dataset.identities]
    if len(set(ids)) != len(ids):
        raise HypernetError(f"{manifest_path} lists an identity more than once")
    rows_by_shard: dict[str, set[int]] = {}
    for e in dataset.identities:
        if e.get("split") not in SPLITS or not isinstance(e.get("row"), int) or not isinstance(e.get("shard"), str):
            raise HypernetError(f"{manifest_path}: identity {e.get('id')!r} has no valid split/shard/row")
        rows_by_shard.setdefault(e["shard"], set()).add(e["row"])
    want = {"vectors": dataset.layout.num_values, "embeddings": dataset.embedding_dim}
    if dataset.global_encoder is not None:
        want["global_embeddings"] = dataset.global_dim
    for shard, rows in rows_by_shard.items():
        shard_path = dataset.path / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise HypernetError(f"{manifest_path} names shard {shard} but {shard_path} is missing; rebuild the dataset")
        try:
            with safe_open(str(shard_path), framework="pt") as f:
                shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        except Exception as exc:  # safetensors' own error types
            raise HypernetError(f"{shard_path} cannot be read ({exc}); rebuild the dataset") from exc
        for key, width in want.items():
            shape = shapes.get(key)
            if shape is None or len(shape) != 2 or shape[1] != width or shape[0] <= max(rows):
                raise HypernetError(f"{shard_path}: {key} has shape {shape}, the manifest needs [>{max(rows)}, {width}]; "
                                    "rebuild the dataset")

