"""Weight autoencoders: normalised flat LoRA vectors [n, D] <-> latents [n, latent_size].

Three kinds behind one interface (`encode` -> (mean, logvar), `decode`), chosen by config:

- `mlp`: LoRA Diffusion's VAE, a residual MLP with a dense first layer over the whole vector.
  Its parameter count is about 2 * D * hidden, so it suits layouts up to a few 100 k values.
- `chunks`: our reading of DiffLoRA's lightweight autoencoder (the paper gives no layer
  shapes). The vector is cut into chunks of `chunk` values and every chunk goes through the
  same residual MLP (a strided 1D convolution with kernel = stride = chunk), modulated by a
  sinusoidal encoding of the chunk's position, to a `token_dim` token. The parameter count
  does not depend on D: about 2 * chunk * hidden. The latent is the tokens, flattened.
- `linear`: ours. The top `latent_dim` principal directions of the normalised training vectors,
  fitted in closed form (`fit`), no gradient steps: D * latent_dim values. For collections whose
  LoRAs are mostly per-identity training noise (the typeface miniature's: two trainings of one
  family have delta-W cosine 0.04), the part that similar identities share lives in the few
  leading directions and is a few per cent of the variance; an MLP trained on the reconstruction
  error gains too little from it and collapses to the mean LoRA, while principal components
  keep it by construction.

The `delta_loss` below (error measured on delta W = up @ down per module, on denormalised
values) is our own "weight-preserving" term, not a formula from the papers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HypernetError
from .embeddings import sinusoid
from ..common.messages import brief
from ..lora.layout import Layout
from ..lora.vectorize import module_slices

KINDS = ("mlp", "chunks", "linear")
LOGVAR_RANGE = (-20.0, 5.0)  # exp(logvar) in the KL term must not overflow early in training


@dataclass(frozen=True)
class AutoencoderConfig:
    kind: str = "mlp"
    latent_dim: int = 512  # mlp: the latent size m
    hidden: int = 512
    blocks: int = 2
    chunk: int = 4096  # chunks: values per chunk
    token_dim: int = 8  # chunks: latent channels per chunk
    kl_weight: float = 0.1  # beta; the KL term is averaged over latent dimensions
    delta_weight: float = 0.0  # ours: weight of the delta-W reconstruction term

    def __post_init__(self):
        if self.kind not in KINDS:
            raise HypernetError(f"autoencoder kind must be one of {KINDS}, not {brief(self.kind)}")
        for name in ("latent_dim", "hidden", "chunk", "token_dim"):
            if int(getattr(self, name)) < 1:
                raise HypernetError(f"autoencoder {name} must be at least 1")
        if self.blocks < 0 or self.kl_weight < 0 or self.delta_weight < 0:
            raise HypernetError("autoencoder blocks, kl_weight and delta_weight must not be negative")


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, scale_shift: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(h)
        if scale_shift is not None:
            scale, shift = scale_shift.chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return h + self.fc2(F.silu(self.fc1(x)))


class MlpAutoencoder(nn.Module):
    def __init__(self, num_values: int, cfg: AutoencoderConfig):
        super().__init__()
        self.latent_size = cfg.latent_dim
        self.enc_in = nn.Linear(num_values, cfg.hidden)
        self.enc_blocks = nn.ModuleList(ResidualBlock(cfg.hidden) for _ in range(cfg.blocks))
        self.enc_out = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)
        self.dec_in = nn.Linear(cfg.latent_dim, cfg.hidden)
        self.dec_blocks = nn.ModuleList(ResidualBlock(cfg.hidden) for _ in range(cfg.blocks))
        self.dec_out = nn.Linear(cfg.hidden, num_values)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc_in(x)
        for block in self.enc_blocks:
            h = block(h)
        mean, logvar = self.enc_out(F.silu(h)).chunk(2, dim=-1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dec_in(z)
        for block in self.dec_blocks:
            h = block(h)
        return self.dec_out(F.silu(h))


class ChunkAutoencoder(nn.Module):
    POSITION_DIM = 64

    def __init__(self, num_values: int, cfg: AutoencoderConfig):
        super().__init__()
        self.num_values, self.chunk, self.token_dim = num_values, cfg.chunk, cfg.token_dim
        self.num_chunks = -(-num_values // cfg.chunk)
        self.latent_size = self.num_chunks * cfg.token_dim
        self.enc_in = nn.Linear(cfg.chunk, cfg.hidden)
        self.dec_in = nn.Linear(cfg.token_dim, cfg.hidden)
        # One FiLM per block from the position encoding: the same weights serve every chunk.
        self.enc_film = nn.Linear(self.POSITION_DIM, 2 * cfg.hidden * max(cfg.blocks, 1))
        self.dec_film = nn.Linear(self.POSITION_DIM, 2 * cfg.hidden * max(cfg.blocks, 1))
        self.enc_blocks = nn.ModuleList(ResidualBlock(cfg.hidden) for _ in range(cfg.blocks))
        self.dec_blocks = nn.ModuleList(ResidualBlock(cfg.hidden) for _ in range(cfg.blocks))
        self.enc_out = nn.Linear(cfg.hidden, 2 * cfg.token_dim)
        self.dec_out = nn.Linear(cfg.hidden, cfg.chunk)
        for film in (self.enc_film, self.dec_film):
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)

    def _films(self, film: nn.Linear, device) -> list[torch.Tensor]:
        position = sinusoid(torch.arange(self.num_chunks, device=device), self.POSITION_DIM)
        return film(position).chunk(max(len(self.enc_blocks), 1), dim=-1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padded = F.pad(x, (0, self.num_chunks * self.chunk - self.num_values))
        h = self.enc_in(padded.view(*x.shape[:-1], self.num_chunks, self.chunk))
        for block, film in zip(self.enc_blocks, self._films(self.enc_film, x.device)):
            h = block(h, film)
        mean, logvar = self.enc_out(F.silu(h)).chunk(2, dim=-1)
        return mean.flatten(-2), logvar.clamp(*LOGVAR_RANGE).flatten(-2)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dec_in(z.view(*z.shape[:-1], self.num_chunks, self.token_dim))
        for block, film in zip(self.dec_blocks, self._films(self.dec_film, z.device)):
            h = block(h, film)
        return self.dec_out(F.silu(h)).flatten(-2)[..., :self.num_values]


class LinearAutoencoder(nn.Module):
    """latent = x @ basis.T, x = latent @ basis, with orthonormal basis rows (principal directions)."""

    def __init__(self, num_values: int, cfg: AutoencoderConfig):
        super().__init__()
        self.latent_size = cfg.latent_dim
        self.basis = nn.Parameter(torch.zeros(cfg.latent_dim, num_values), requires_grad=False)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x @ self.basis.T
        return mean, torch.full_like(mean, LOGVAR_RANGE[0])  # a point posterior

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.basis

    @torch.no_grad()
    def fit(self, x_norm: torch.Tensor, seed: int = 0) -> None:
        """Basis := the leading right singular vectors of `x_norm` [n, D] (rows the normalised,
        hence centred, training vectors). Randomised SVD with a fixed seed, so the same data gives
        the same basis; each row's sign puts its largest entry positive. Directions beyond the
        data's rank stay zero."""
        k = min(self.latent_size, *x_norm.shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(x_norm.double(), q=min(k + 10, *x_norm.shape), niter=6)
        rows = v[:, :k].T
        signs = rows.gather(1, rows.abs().argmax(1, keepdim=True)).sign()
        self.basis.zero_()
        self.basis[:k] = (rows * signs).to(self.basis)


def directions_above_noise(x: torch.Tensor) -> torch.Tensor:
    """The principal directions of `x` [n, D] (centred rows) that stand above its noise, as
    orthonormal rows [r, D], leading first: those whose singular values exceed Gavish and Donoho's
    optimal hard threshold for white noise of unknown level ("The optimal hard threshold for
    singular values is 4/sqrt(3)", 2014), omega(beta) times the median singular value, beta the
    matrix's aspect ratio. The directions below it are each row's own noise."""
    x = x.double()
    wide = x.shape[0] <= x.shape[1]
    eigenvalues, vectors = torch.linalg.eigh(x @ x.T if wide else x.T @ x)  # the smaller side's Gram matrix
    singular, vectors = eigenvalues.flip(0).clamp_min(0).sqrt(), vectors.flip(1)
    beta = min(x.shape) / max(x.shape)
    omega = 0.56 * beta ** 3 - 0.95 * beta ** 2 + 1.82 * beta + 1.43
    rank = int((singular > omega * singular.median()).sum())
    if wide:  # left singular vectors -> right ones
        return (x.T @ vectors[:, :rank] / singular[:rank]).T
    return vectors[:, :rank].T


def build_autoencoder(num_values: int, cfg: AutoencoderConfig) -> nn.Module:
    kinds = {"mlp": MlpAutoencoder, "chunks": ChunkAutoencoder, "linear": LinearAutoencoder}
    return kinds[cfg.kind](num_values, cfg)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) averaged over latent dimensions and the batch."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).mean()


def delta_sq_error(pred: torch.Tensor, true: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Per row, sum over modules of ||up_p down_p - up_t down_t||_F^2 for canonical flat vectors,
    computed from rank x rank products so no dense delta W is built."""
    n = pred.shape[0]
    total = pred.new_zeros(n)
    for s in module_slices(layout):
        up_p, down_p = pred[:, s.start:s.mid].view(n, *s.up_shape), pred[:, s.mid:s.stop].view(n, *s.down_shape)
        up_t, down_t = true[:, s.start:s.mid].view(n, *s.up_shape), true[:, s.mid:s.stop].view(n, *s.down_shape)

        def inner(ua, da, ub, db):
            return (ua.transpose(1, 2) @ ub * (da @ db.transpose(1, 2))).sum((1, 2))

        total = total + inner(up_p, down_p, up_p, down_p) + inner(up_t, down_t, up_t, down_t) \
            - 2 * inner(up_p, down_p, up_t, down_t)
    return total.clamp_min(0)
