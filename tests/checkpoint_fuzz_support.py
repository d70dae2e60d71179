"""Shared by the hostile-checkpoint tests: the small variants, the work counter, the refusal
checks and the `good` checkpoint fixture (import it into the test module)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypernet_support import SMALL_LAYOUT
from hypothesis import HealthCheck, settings
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import hypernet.model.checkpoint as checkpoint
from hypernet.errors import HypernetError
from hypernet.model.autoencoder import AutoencoderConfig
from hypernet.model.checkpoint import load_hypernet, save_hypernet
from hypernet.model.hypernet import Hypernet, HypernetConfig
from hypernet.model.prior_config import PriorConfig

MAX_MESSAGE = 500  # characters: a message names the problem, it does not echo the file

# Small hypernets that between them use every repeated block list, size field and autoencoder kind.
VARIANTS = {
    "mlp": dict(autoencoder=AutoencoderConfig(latent_dim=16, hidden=24, blocks=1),
                prior=PriorConfig(width=32, blocks=2, adalora_rank=2, time_dim=16)),
    "transformer": dict(autoencoder=AutoencoderConfig(kind="chunks", chunk=256, token_dim=4, hidden=24, blocks=2),
                        prior=PriorConfig(kind="transformer", conditioning="adanorm", tokens=4, token_width=16,
                                          depth=2, heads=2, time_dim=16)),
    "linear": dict(autoencoder=AutoencoderConfig(kind="linear", latent_dim=12),
                   prior=PriorConfig(kind="transformer", conditioning="adanorm", tokens=2, token_width=16,
                                     depth=1, heads=2, time_dim=16)),
}
# The config fields each variant's model is built from (the others are kept but unused).
USED = {"mlp": {"prior": {"width", "blocks", "adalora_rank", "time_dim"},
                "autoencoder": {"latent_dim", "hidden", "blocks"}},
        "transformer": {"prior": {"token_width", "depth", "heads", "tokens", "time_dim"},
                        "autoencoder": {"chunk", "token_dim", "hidden", "blocks"}},
        "linear": {"prior": {"token_width", "depth", "heads", "tokens", "time_dim"},
                   "autoencoder": {"latent_dim"}}}


@dataclass
class Work:
    modules: int = 0  # nn.Module constructions
    weights: int = 0  # tensors read from a file


class TooMuchWork(AssertionError):
    pass


@contextlib.contextmanager
def counting_work(max_modules: int | None = None):
    """Counts module constructions and weight reads for the duration of the block. Past
    `max_modules` it fails at once: a regression must fail the test, not hang it for minutes."""
    work = Work()
    module_init, real_safe_open = nn.Module.__init__, checkpoint.safe_open

    def counting_init(self, *args, **kwargs):
        work.modules += 1
        if max_modules is not None and work.modules > max_modules:
            raise TooMuchWork(f"more than {max_modules} modules built while loading a broken checkpoint")
        module_init(self, *args, **kwargs)

    class CountingSafeOpen:
        def __init__(self, *args, **kwargs):
            self.inner = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self.file = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, key):
            work.weights += 1
            return self.file.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.file, name)

    nn.Module.__init__ = counting_init
    checkpoint.safe_open = CountingSafeOpen
    try:
        yield work
    finally:
        nn.Module.__init__ = module_init
        checkpoint.safe_open = real_safe_open


def folder_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refuse(path: Path, match: str | None = None, max_modules: int = 0, max_weights: int = 0) -> HypernetError:
    """Load `path`, demand a refusal within the given work, one line, nothing written."""
    before = folder_state(path.parent)
    with counting_work(max_modules) as work, pytest.raises(HypernetError, match=match) as caught:
        load_hypernet(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) <= MAX_MESSAGE, message[:1000]
    assert work.modules <= max_modules, f"{work.modules} modules built before refusing: {message}"
    assert work.weights <= max_weights, f"{work.weights} weights read before refusing: {message}"
    assert folder_state(path.parent) == before
    return caught.value


def load_or_refuse(path: Path, good: Good) -> None:
    """Either a clean load or a clean refusal, never more work than the honest model."""
    before = folder_state(path.parent)
    with counting_work(good.work.modules) as work:
        try:
            load_hypernet(path)
        except HypernetError as exc:
            assert "\n" not in str(exc) and len(str(exc)) <= MAX_MESSAGE, str(exc)[:1000]
    assert work.modules <= good.work.modules and work.weights <= good.work.weights
    assert folder_state(path.parent) == before


@dataclass
class Good:
    """A valid checkpoint and what loading it costs."""

    variant: str
    path: Path
    tensors: dict[str, torch.Tensor] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)
    work: Work

    @property
    def config(self) -> dict:
        return json.loads(self.metadata["config"])


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def good(request, tmp_path_factory) -> Good:
    torch.manual_seed(0)
    model = Hypernet(HypernetConfig(layout=SMALL_LAYOUT, embedding_model="fuzz-face", **VARIANTS[request.param]))
    path = tmp_path_factory.mktemp(request.param) / "good.safetensors"
    save_hypernet(model, path)
    with counting_work() as work:
        load_hypernet(path)
    with safe_open(str(path), framework="pt") as f:
        return Good(request.param, path, {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata()), work)


def write(folder: Path, tensors: dict, metadata: dict, name: str = "broken.safetensors") -> Path:
    path = folder / name
    save_file(tensors, str(path), metadata=metadata)
    return path


def with_config(good: Good, folder: Path, edit) -> Path:
    config = good.config
    edit(config)
    return write(folder, good.tensors, {**good.metadata, "config": json.dumps(config)})


def raw_file(header: str | bytes, data: bytes = b"", declared: int | None = None) -> bytes:
    body = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(body) if declared is None else declared) + body + data



FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
