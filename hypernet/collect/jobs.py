"""Planning a collect run: its settings, one job per identity folder, and what is already done."""
from __future__ import annotations

import hashlib
import json
import shutil
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common.files import read_json_object, sha256_file
from ..common.tensors import seeded_generator
from ..data.identity_folders import PHOTO_SUFFIXES, scan_source
from ..common.images import read_image
from ..errors import HypernetError
from ..lora.layout import Layout
from ..lora.lora_io import layout_from_lora, read_lora

LORA_FILE = "lora.safetensors"
RECORD_FILE = "collect.json"
RUN_FILE = "collect_run.json"
PARTIAL_PREFIX = ".partial-"
DEFAULT_TEMPLATE = "a photo of {token} person"
DEFAULT_TOKEN = "sks"
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainingSettings:
    """What every identity is trained with; the trainer's own settings are built from these."""

    steps: int = 200
    learning_rate: float = 1e-4
    batch_size: int = 1
    resolution: int = 1024
    seed: int = 0
    caption_template: str = DEFAULT_TEMPLATE
    token: str = DEFAULT_TOKEN
    class_images: tuple[str, ...] = ()
    # The reported losses average this many fixed noise/timestep draws per image (the base
    # model's, the start's, the result's): 62 glyphs x 4 draws x 3 cost as much as training.
    eval_draws: int = 4
    lr_schedule: str = "constant"  # or "cosine" (lora_training.settings)

    def __post_init__(self):
        for name in ("steps", "batch_size", "resolution", "eval_draws"):
            if int(getattr(self, name)) < 1:
                raise HypernetError(f"--{name.replace('_', '-')} must be 1 or more, not {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise HypernetError(f"--learning-rate must be above 0, not {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise HypernetError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        check_template(self.caption_template, "--caption-template")


def check_template(text: str, what: str) -> str:
    """A caption template may name `{token}` and nothing else; anything else is the user's typo."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise HypernetError(f"{what} {text!r} is not a valid template ({exc}); write braces as {{{{ and }}}}") from None
    if fields - {"token"}:
        raise HypernetError(f"{what} {text!r} names {', '.join(sorted(fields - {'token'}))}; the only "
                            "placeholder is {token}")
    return text


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs to train identities; plain values, so it pickles to any process."""

    src: str
    out: str
    base_checkpoint: str
    base_sha256: str
    layout: dict  # Layout.to_dict()
    layout_name: str
    settings: TrainingSettings
    trainer: str
    init_lora: str | None = None
    init_sha256: str | None = None
    face_model: str | None = None
    preload: tuple[str, ...] = ()
    threads: int = 1
    link_photos: bool = True
    # Identities trained together in one batched loop (a speed setting: an identity's LoRA does
    # not depend on its group, so it is not part of key()).
    identities_per_step: int = 1

    def groups(self, jobs: list[IdentityJob]) -> list[list[IdentityJob]]:
        """The runners' units of work, in plan order."""
        k = self.identities_per_step
        return [jobs[i:i + k] for i in range(0, len(jobs), k)]

    def key(self) -> dict:
        """What decides a finished identity's LoRA: a re-run with another key must not mix with it."""
        settings = asdict(self.settings)
        settings["class_images"] = [Path(p).name for p in self.settings.class_images]
        if settings["lr_schedule"] == "constant":  # collections made before the schedule existed keep their key
            del settings["lr_schedule"]
        return {"base_sha256": self.base_sha256, "layout": self.layout_name,
                "layout_sha256": hashlib.sha256(json.dumps(self.layout).encode()).hexdigest(),
                "settings": settings, "init_sha256": self.init_sha256, "trainer": self.trainer,
                "faces": self.face_model is not None}


@dataclass
class IdentityJob:
    id: str
    photos: list[str]
    captions: list[str]
    caption_files: list[str]
    seed: int


@dataclass
class Plan:
    jobs: list[IdentityJob]
    finished: list[str] = field(default_factory=list)


def identity_seed(seed: int, identity: str) -> int:
    """The identity's own seed: from the run's seed and its name, so order and resumes change nothing."""
    return int(seeded_generator(seed, "collect", identity).initial_seed())


def caption_for(photo: Path, settings: TrainingSettings) -> tuple[str, Path | None]:
    """kohya's convention: `<photo stem>.txt` beside the photo holds its caption; else the template."""
    text_file = photo.with_suffix(".txt")
    if text_file.is_file():
        text = " ".join(text_file.read_text(errors="replace").split())
        return check_template(text, f"caption file {text_file}").format(token=settings.token), text_file
    return settings.caption_template.format(token=settings.token), None


def plan_run(spec: RunSpec) -> Plan:
    """One job per identity folder of `spec.src` not finished in `spec.out` by a run with the same key."""
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{PARTIAL_PREFIX}*"):  # left by a killed run: those identities were in flight
        shutil.rmtree(stale, ignore_errors=True)
    plan = Plan([])
    key = spec.key()
    for folder in scan_source(Path(spec.src)):
        record = out / folder.id / RECORD_FILE
        if record.is_file():
            check_same_key(record, key)
            plan.finished.append(folder.id)
            continue
        if (out / folder.id).exists():
            raise HypernetError(f"{out / folder.id} exists but has no {RECORD_FILE}: it was not written by collect; "
                                "collect into an empty folder or the folder of an earlier collect run")
        photos = [p for p in folder.photos if p.suffix.lower() in PHOTO_SUFFIXES]
        captions = [caption_for(p, spec.settings) for p in photos]
        plan.jobs.append(IdentityJob(folder.id, [str(p) for p in photos], [c for c, _ in captions],
                                     [str(f) for _, f in captions if f is not None],
                                     identity_seed(spec.settings.seed, folder.id)))
    return plan


def check_same_key(record_path: Path, key: dict) -> None:
    old = read_json_object(record_path, "a collect record").get("key")
    if old == key:
        return
    old = old if isinstance(old, dict) else {}
    differs = [k for k in key if old.get(k) != key[k]]
    if "settings" in differs:
        differs = [f"settings.{k}" for k in key["settings"] if (old.get("settings") or {}).get(k) != key["settings"][k]]
    raise HypernetError(f"{record_path.parent} was trained with other settings ({', '.join(differs)} differ); "
                        "continue it with the same settings or collect into another --out folder")


def layout_difference(got: Layout, want: Layout) -> str | None:
    """The first way `got` is not exactly `want` (modules, shapes, ranks, alphas), or None."""
    missing = [n for n in want.names if n not in got]
    extra = [n for n in got.names if n not in want]
    if missing or extra:
        return (f"{len(missing)} of the layout's {len(want)} modules missing (e.g. {', '.join(missing[:2]) or '-'}), "
                f"{len(extra)} others (e.g. {', '.join(extra[:2]) or '-'})")
    for module in want.modules:
        other = got[module.name]
        if other != module:
            return (f"module {module.name} is {other.out_features}x{other.in_features} at rank {other.rank}, alpha "
                    f"{other.alpha:g}; the layout has {module.out_features}x{module.in_features} at rank "
                    f"{module.rank}, alpha {module.alpha:g}")
    return None


def check_init_lora(path: str, layout: Layout) -> None:
    """--init must be exactly the layout's LoRA, or every identity would fail the same way."""
    weights = read_lora(path).unet_only()
    problem = layout_difference(layout_from_lora(weights, layout.base_model), layout)
    if problem:
        raise HypernetError(f"--init LoRA {path} does not fit the layout: {problem}; start from a LoRA of this layout "
                            "(e.g. one sampled by a hypernet trained on it)")


def check_class_images(paths: tuple[str, ...]) -> None:
    """Every class image readable, before any identity trains with them."""
    for path in paths:
        read_image(path)


def file_sha256(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise HypernetError(f"{what} {path} does not exist")
    return sha256_file(path)


def class_image_files(folder: str | None) -> tuple[str, ...]:
    """The prior-preservation class images: every photo in the folder, sorted."""
    if folder is None:
        return ()
    path = Path(folder)
    if not path.is_dir():
        raise HypernetError(f"--class-images {folder} is not a folder of photos")
    photos = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise HypernetError(f"--class-images {folder} holds no photos ({', '.join(sorted(PHOTO_SUFFIXES))})")
    return tuple(photos)
