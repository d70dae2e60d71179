"""The prior's settings (`PriorConfig`), shared by both denoisers and the checkpoint config."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import HypernetError
from ..common.messages import brief

CONDITIONINGS = ("adanorm", "adalora")
KINDS = ("mlp", "transformer")
# Fields added after the first hypernets were saved; they are written only when they differ from
# their defaults, so the config JSON of an older kind of hypernet is exactly what it was.
OPTIONAL_FIELDS = ("kind", "tokens", "token_width", "depth", "heads", "adalora_gate")


@dataclass(frozen=True)
class PriorConfig:
    width: int = 1024
    blocks: int = 4
    conditioning: str = "adalora"
    adalora_rank: int = 4
    time_dim: int = 256
    cond_dropout: float = 0.1
    kind: str = "mlp"
    # transformer only: the latent is cut into `tokens` tokens (zero-padded to a multiple),
    # each embedded to `token_width`; `depth` blocks with `heads` attention heads.
    tokens: int = 16
    token_width: int = 128
    depth: int = 4
    heads: int = 4
    adalora_gate: bool = False  # MLP adalora only: zero-initialised gate on the low-rank term

    def __post_init__(self):
        if self.conditioning not in CONDITIONINGS:
            raise HypernetError(f"conditioning must be one of {CONDITIONINGS}, not {brief(self.conditioning)}")
        if self.kind not in KINDS:
            raise HypernetError(f"prior kind must be one of {KINDS}, not {brief(self.kind)}")
        if self.width < 2 or self.blocks < 1 or self.adalora_rank < 1 or self.time_dim < 2:
            raise HypernetError("prior width, blocks, adalora_rank and time_dim must be positive")
        if self.tokens < 1 or self.depth < 1 or self.heads < 1 or self.token_width < 2:
            raise HypernetError("prior tokens, token_width, depth and heads must be positive")
        if self.token_width % self.heads:
            raise HypernetError(f"prior token_width {self.token_width} must be a multiple of heads {self.heads}")
        if not isinstance(self.adalora_gate, bool):
            raise HypernetError(f"adalora_gate must be true or false, not {brief(self.adalora_gate)}")
        if self.adalora_gate and (self.kind != "mlp" or self.conditioning != "adalora"):
            raise HypernetError("adalora_gate applies to the MLP prior with adalora conditioning only")
        if not 0 <= self.cond_dropout < 1:
            raise HypernetError("cond_dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        data = asdict(self)
        defaults = PriorConfig.__dataclass_fields__
        for key in OPTIONAL_FIELDS:
            if data[key] == defaults[key].default:
                del data[key]
        return data
