"""Reference-aligned LoRA factors: the representation the autoencoder learns on (our choice).

Canonical SVD factors (canonical.py) make equal updates equal vectors, but they are not a
smooth function of delta W: singular values of similar size swap order and the sign rule
flips columns, so neighbouring LoRAs can have far-apart vectors. Measured on the synthetic
collection (synth-100k, 1,000 identities): the first 32 principal components of normalised
canonical vectors hold 14.5 % of the variance, those of aligned vectors 98.3 %
(`benchmarks/bench_hypernet.py` prints this).

Every balanced factorisation of delta W is (U sqrt(S) Q, Q^T sqrt(S) V^T) for an orthogonal
r x r matrix Q. Per module we pick the Q that brings the stacked factors [up; down^T] closest
to those of a fixed reference (the SVD factors of the training set's mean delta W),
orthogonal Procrustes. Q varies smoothly with delta W, and delta W itself is unchanged.
"""
from __future__ import annotations

import torch

from .layout import Layout
from .vectorize import _check_size, module_slices


def _stacked(vectors: torch.Tensor, s) -> torch.Tensor:
    """[n, out + in, r]: up on top of down^T."""
    n = vectors.shape[0]
    up = vectors[:, s.start:s.mid].reshape(n, *s.up_shape)
    down = vectors[:, s.mid:s.stop].reshape(n, *s.down_shape)
    return torch.cat([up, down.transpose(1, 2)], dim=1)


def _unstack(stacked: torch.Tensor, s, out: torch.Tensor) -> None:
    n, rows = stacked.shape[0], s.up_shape[0]
    out[:, s.start:s.mid] = stacked[:, :rows].reshape(n, -1)
    out[:, s.mid:s.stop] = stacked[:, rows:].transpose(1, 2).reshape(n, -1)


def reference_factors(vectors: torch.Tensor, layout: Layout, chunk_rows: int = 256) -> torch.Tensor:
    """[D]: balanced SVD factors of each module's mean delta W over `vectors` [N, D]."""
    _check_size(vectors, layout)
    reference = torch.zeros(1, layout.num_values)
    for s in module_slices(layout):
        mean_delta = torch.zeros(s.up_shape[0], s.down_shape[1], dtype=torch.float64)
        for rows in vectors.split(chunk_rows):
            n = rows.shape[0]
            up = rows[:, s.start:s.mid].reshape(n, *s.up_shape).double()
            down = rows[:, s.mid:s.stop].reshape(n, *s.down_shape).double()
            # sum_i up_i down_i as one [out, n r] x [n r, in] product: no n x out x in stack
            # (3 GB per chunk for an SDXL attention module, minutes of memory traffic).
            mean_delta += up.transpose(0, 1).reshape(s.up_shape[0], -1) @ down.reshape(-1, s.down_shape[1])
        mean_delta /= vectors.shape[0]
        u, sv, vh = torch.linalg.svd(mean_delta, full_matrices=False)
        rank = s.up_shape[1]
        root = sv[:rank].sqrt()
        stacked = torch.zeros(1, s.up_shape[0] + s.down_shape[1], rank, dtype=torch.float64)
        k = root.shape[0]  # a module narrower than its rank keeps zero columns
        stacked[0, :s.up_shape[0], :k] = u[:, :k] * root
        stacked[0, s.up_shape[0]:, :k] = vh[:k].T * root
        _unstack(stacked.float(), s, reference)
    return reference[0]


def align(vectors: torch.Tensor, reference: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Vectors [n, D] with every module's factors rotated (Procrustes) towards `reference` [D]."""
    _check_size(vectors, layout)
    out = torch.empty_like(vectors)
    ref = reference.to(vectors)[None]
    for s in module_slices(layout):
        x = _stacked(vectors, s)
        p, _, wh = torch.linalg.svd(x.transpose(1, 2).double() @ _stacked(ref, s).double())
        _unstack(x @ (p @ wh).to(x.dtype), s, out)
    return out
