"""The ridge baseline of `evaluate`: exact where the answer is known, its lambda chosen on the
training identities only, and printed beside the other baselines."""
import math

import pytest
import torch

from hypernet.common.tensors import l2_normalize
from hypernet.data.dataset import DatasetRecord, open_dataset, write_dataset
from hypernet.errors import HypernetError
from hypernet.lora.layout import Layout
from hypernet.lora.presets import preset
from hypernet.lora.vectorize import flatten
from hypernet.lora.weights import LoraWeights, ModuleWeights
from hypernet.pipeline.evaluate import ridge_baseline
from hypernet.pipeline.metrics import compare
from hypernet.pipeline.ridge import (choose_lambda, ridge_linear_map, ridge_low_rank, ridge_mix, ridge_predict,
                                     validation_split)

LAYOUT = Layout(preset("tiny-attn-r4").modules[:4], "sdxl")
EMBEDDING_DIM = 16


def linear_collection(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(canonical LoRA vectors [n, D], embeddings [n, E]) whose delta W is exactly linear in the
    embedding: a fixed up factor per module times a down factor linear in the embedding."""
    gen = torch.Generator().manual_seed(seed)
    emb = l2_normalize(torch.randn(count, EMBEDDING_DIM, generator=gen))
    modules = {}
    per_module = []
    for m in LAYOUT:
        up = torch.randn(m.out_features, m.rank, generator=gen) * 0.03
        base = torch.randn(m.rank, m.in_features, generator=gen) * 0.03
        slope = torch.randn(EMBEDDING_DIM, m.rank * m.in_features, generator=gen) * 0.01
        per_module.append((m, up, base, slope))
    vectors = []
    for i in range(count):
        for m, up, base, slope in per_module:
            down = base + (emb[i] @ slope).reshape(m.rank, m.in_features)
            modules[m.name] = ModuleWeights(up, down, float(m.rank))
        vectors.append(flatten(LoraWeights(dict(modules)), LAYOUT))
    return torch.stack(vectors), emb


def test_ridge_recovers_an_exactly_linear_map():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=gen, dtype=torch.float64)
    weight, bias = torch.randn(8, 5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen,
                                                                                        dtype=torch.float64)
    y = x @ weight + bias
    lam, error = choose_lambda(x, y, lambda p, t: float((p - t).square().mean()))
    assert error < 1e-8 and lam < 1e-3 * float(torch.linalg.matrix_norm(x - x.mean(0), ord=2)) ** 2
    w, b = ridge_linear_map(x, y, lam)
    assert torch.allclose(w.double(), weight, atol=1e-3) and torch.allclose(b.double(), bias, atol=1e-3)
    new = torch.randn(7, 8, generator=gen, dtype=torch.float64)
    assert torch.allclose(ridge_predict(x, y, new, lam), new @ weight + bias, atol=1e-3)
    # the mixing form and the explicit map give the same prediction
    assert torch.allclose(ridge_mix(x, new, lam) @ y, new @ w.double() + b.double(), atol=1e-4)


def test_ridge_shrinks_to_the_mean_when_the_targets_ignore_the_inputs():
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 8, generator=gen), torch.randn(300, 3, generator=gen)
    lam, _ = choose_lambda(x, y, lambda p, t: float((p - t).square().mean()))
    w, _ = ridge_linear_map(x, y, lam)
    assert float(w.abs().max()) < 0.05  # an unregularised fit of pure noise would give ~0.06 per weight


def test_validation_split_is_seeded_disjoint_and_never_empty():
    fit, val = validation_split(50, seed=3)
    again = validation_split(50, seed=3)
    assert torch.equal(fit, again[0]) and torch.equal(val, again[1])
    assert len(val) == 5 and len(fit) == 45 and not set(fit.tolist()) & set(val.tolist())
    assert len(validation_split(3)[1]) == 1
    with pytest.raises(HypernetError, match="at least 3"):
        validation_split(2)


def test_ridge_baseline_is_exact_on_a_collection_linear_in_the_embedding():
    vectors, emb = linear_collection(160)
    train, held = slice(0, 140), slice(140, 160)
    result = ridge_baseline(vectors[train], emb[train], vectors[held], emb[held], LAYOUT)
    assert result["top1"] == 1.0 and result["rel_err"] < 0.02 and result["cosine"] > 0.999
    nearest = vectors[train][(emb[held] @ emb[train].T).argmax(1)]
    assert compare(nearest, vectors[held], LAYOUT)["rel_err"] > 10 * result["rel_err"]


def test_ridge_baseline_on_a_dataset_folder_chooses_lambda_on_training_identities(tmp_path):
    """On a real dataset folder: the held-out identities decide nothing but the score."""
    vectors, emb = linear_collection(60, seed=4)
    records = [DatasetRecord.in_memory(f"id-{i:03d}", v, e) for i, (v, e) in enumerate(zip(vectors, emb))]
    data = write_dataset(tmp_path / "data", LAYOUT, "linear-test", records, heldout_fraction=0.2)
    dataset = open_dataset(data)
    train_v, train_e, _ = dataset.load("train")
    held_v, held_e, _ = dataset.load("heldout")
    direct = ridge_baseline(train_v, train_e, held_v, held_e, LAYOUT)
    # lambda depends on the training identities only: other held-out rows give the same lambda
    assert direct["lambda"] == ridge_baseline(train_v, train_e, held_v[:3], held_e[:3], LAYOUT)["lambda"]
    assert direct["top1"] == 1.0 and math.isfinite(direct["lambda"])


def test_the_low_rank_ridge_map_is_exact_within_its_rank_and_the_best_truncation_beyond():
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(40, 12, generator=gen), torch.randn(40, 300, generator=gen)
    new = torch.randn(6, 12, generator=gen)
    lam = 0.3
    a, b, bias = ridge_low_rank(x, y, lam, max_rank=64)
    assert a.shape == (12, 12) and b.shape == (12, 300)  # the map's rank is at most the face size
    assert torch.allclose((new @ a) @ b + bias, ridge_predict(x, y, new, lam), atol=1e-4)
    # truncated to rank 4: the coefficients are the full map's best rank-4 approximation
    full, _ = ridge_linear_map(x, y, lam)
    a4, b4, bias4 = ridge_low_rank(x, y, lam, max_rank=4)
    u, s, vh = torch.linalg.svd(full.double())
    assert torch.allclose((a4 @ b4).double(), (u[:, :4] * s[:4]) @ vh[:4], atol=1e-4)
    assert torch.allclose(bias4, y.mean(0) - x.mean(0) @ (a4 @ b4), atol=1e-4)
