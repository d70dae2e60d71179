"""The LoRAs a hypernet is compared with on images, from a collection of training identities:
the LoRA of the training identity whose embedding is nearest, and the mean training LoRA."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.tensors import l2_normalize, mean_embedding
from ..data.identity_folders import load_embedding_file, scan_source
from ..errors import HypernetError
from ..lora.lora_io import read_lora
from ..lora.weights import LoraWeights, ModuleWeights


@dataclass
class TrainingIdentities:
    ids: list[str]
    embeddings: torch.Tensor  # [n, d], unit rows
    lora_files: list[Path]

    def nearest(self, embedding: torch.Tensor) -> int:
        """Index of the training identity with the highest cosine to `embedding` [d]."""
        return int((self.embeddings.double() @ l2_normalize(embedding.double().reshape(-1))).argmax())


def read_training_identities(src: Path, embedder) -> TrainingIdentities:
    """Identity folders with one LoRA each (a `collect` output, or the dataset builder's input),
    with their embeddings: their photos embedded as the held-out references are, else the
    folder's embedding file when `embedder`'s model made it. A folder without a LoRA or without
    any embedding is an error."""
    ids, embeddings, files = [], [], []
    for folder in scan_source(src):
        if len(folder.loras) != 1:
            raise HypernetError(f"training identity {folder.path} holds {len(folder.loras)} LoRA files; "
                                "--train-collection needs exactly one per identity folder (a collect output)")
        if folder.photos:  # the same path as the held-out references, so distances compare like with like
            embedding = mean_embedding(torch.as_tensor(embedder.embed_references(folder.photos)))
        elif folder.embedding_file is not None:
            embedding, metadata = load_embedding_file(folder.embedding_file)
            model = metadata.get("embedding_model")
            if model is not None and model != embedder.name:
                raise HypernetError(f"{folder.embedding_file} holds '{model}' embeddings but this evaluation embeds "
                                    f"with '{embedder.name}'; give the embedding model the collection was made with")
        else:
            raise HypernetError(f"training identity {folder.path} has neither photos nor an embedding file, so "
                                "its nearest-identity distance cannot be measured")
        ids.append(folder.id)
        embeddings.append(embedding.reshape(-1).float())
        files.append(folder.loras[0])
    return TrainingIdentities(ids, l2_normalize(torch.stack(embeddings)), files)


def mean_lora(files: list[Path]) -> LoraWeights:
    """The LoRA whose delta W is the mean of the files' delta W, module by module, exactly: the
    mean is re-factored by SVD at the smallest rank that holds it (at most n * rank)."""
    loras = [read_lora(f) for f in files]
    names = list(loras[0])
    for path, lora in zip(files[1:], loras[1:]):
        if list(lora) != names:
            raise HypernetError(f"{path} has other modules than {files[0]}: the training LoRAs must share one layout")
    modules = {}
    for name in names:
        first = loras[0][name]
        delta = sum(lora[name].delta().double() for lora in loras) / len(loras)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        rank = max(1, min(sum(lora[name].rank for lora in loras), int(s.shape[0])))
        root = s[:rank].sqrt()
        up, down = (u[:, :rank] * root).float(), (root[:, None] * vh[:rank]).float()
        if first.kind == "conv":
            up, down = up.reshape(first.out_features, rank, 1, 1), down.reshape(rank, *first.down.shape[1:])
        modules[name] = ModuleWeights(up, down, float(rank))
    return LoraWeights(modules)
