"""`make miniature` (`python -m miniature run`): the whole typeface experiment, stage by stage.

Every stage is the command a user would run (`python -m miniature ...`, `python -m hypernet
collect | dataset | train | evaluate-images`), started as a subprocess with one torch thread
(measured fastest on a busy 2-core machine; the base model and the encoder train side by side).
A stage whose output exists is skipped, and the long ones resume themselves (train_base
--resume, collect per identity, train --resume), so an interrupted run picks up where it stopped.

    fonts        the curated list's fonts from Debian, SHA-256 checked
    base         the glyph base model (train families only)        } in parallel
    encoder      the typeface encoder + its ONNX recognition model  }
    identities   one identity folder per family: glyph PNGs, captions, embedding
    collect      one LoRA per family, train and held-out (held-out: the per-family upper bound)
    dataset      the train collection as a hypernet dataset
    hypernet     python -m hypernet train, then identity-scale: the scale whose LoRAs draw the
                 dataset's held-out training families best (evaluate-images) is the one shipped
    evaluate     evaluate-images on the held-out families (every method, same prompts and seeds);
                 a few of them trained again alone, for the speedup a user with one typeface sees
    report       benchmarks/miniature.json, the RESULTS.md table, the picture
    ship         the trained files, float16, where the example workflow finds them (models/)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .font_list import FONT_LIST_FILE

REPO = Path(__file__).resolve().parent.parent
STAGES = ("fonts", "base", "encoder", "identities", "collect", "dataset", "hypernet", "evaluate", "report", "ship")
ENCODER_NAME = "typeface"  # the recognition model's folder: the name hypernets record and nodes list
# The prior's conditioning as the papers have it, against the shipped AdaNorm (issue 17's re-test).
CONDITIONING_VARIANTS = {"adalora": {"conditioning": "adalora", "adalora_gate": False},
                         "adalora_gated": {"conditioning": "adalora", "adalora_gate": True}}


@dataclass(frozen=True)
class Scale:
    """How big each stage is. `full` is the issue's experiment (75 minutes on an idle 2-core CPU);
    `ci` is the same pipeline on a few fonts in minutes, for the tests."""

    base_preset: str = "default"
    base_steps: int | None = None
    encoder_steps: int = 600
    glyph_size: int = 16
    layout: str = "tiny-attn-r2"  # rank 2: the shipped hypernet has to fit beside the base model
    # 400 gentle steps: at 80 steps and 1e-2 the per-family LoRAs were mostly noise (a neighbour's
    # LoRA drew a family as well as its own); 400 at 3e-3 fit each family's glyphs better and drew
    # it better (RESULTS.md, issue 17 notes), and grouped 32 per step they fit the 90 minutes.
    collect_steps: int = 400
    collect_lr: float = 3e-3
    collect_batch: int = 4
    collect_eval_draws: int = 1
    identities_per_step: int = 32
    workers: int = 2
    hypernet_config: dict = field(default_factory=lambda: {
        # linear: an MLP VAE collapses to the mean LoRA on these noisy identity LoRAs (autoencoder.py)
        "preset": "default", "autoencoder": {"kind": "linear", "latent_dim": 16},
        "prior": {"width": 64, "blocks": 2, "conditioning": "adanorm"},
        # 1,000 steps, not 3,000: on the validation families the prior drew them better at 500 to
        # 2,000 steps than at 3,000 or 9,000 (it learns the training LoRAs' noise; RESULTS.md)
        "prior_steps": 1000, "prior_batch": 128, "prior_lr": 1e-3, "checkpoint_every": 500})
    dataset_heldout: float = 0.1
    prompts: str = "AaBbEeGgKkMmRr38"
    seeds: tuple[int, ...] = (0,)
    sample_steps: int = 12
    refine_steps: int = 20
    # collect's rate: Refine continues the same training. At 1e-2 it pulled the hypernet's (x2-scaled)
    # LoRAs off (-0.018 +- 0.007 paired on the 111 held-out families); at 3e-3 it neither helps nor
    # hurts (-0.004 +- 0.005)
    refine_lr: float = 3e-3
    # hypernet stage: identity_scale candidates, scored by image on the dataset's held-out split
    # of the training families (never on the evaluated families); the best is shipped
    identity_scales: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    # evaluate stage: held-out families trained again one per step, as a user with one new typeface
    # (no collection to group it with) trains it; the per-family row is a share of a group of 32
    lone_families: int = 2


SCALES = {
    "full": Scale(),
    "ci": Scale(base_preset="ci", encoder_steps=4, collect_steps=6, collect_lr=1e-2, refine_lr=1e-2,
                identities_per_step=2, workers=1,
                hypernet_config={"preset": "tiny", "autoencoder": {"kind": "linear", "latent_dim": 8},
                                 "prior": {"width": 32, "blocks": 1, "conditioning": "adanorm"},
                                 "ae_steps": 20, "prior_steps": 20, "checkpoint_every": 10},
                dataset_heldout=0.2, prompts="AaBb", seeds=(0,), sample_steps=4, refine_steps=2,
                identity_scales=(1.0, 2.0), lone_families=1),
}


class Paths:
    def __init__(self, work: Path):
        self.work = work
        self.base = work / "glyph_base.safetensors"
        self.encoder = work / "encoder"
        self.recognizer = self.encoder / "insightface" / ENCODER_NAME
        self.identities = work / "identities"
        self.collection = work / "collection"
        self.shared_start = work / "shared_start.safetensors"  # every identity LoRA's starting point
        self.dataset = work / "dataset"
        self.hypernet = work / "typeface_hypernet.safetensors"  # the trained one at the chosen scale
        self.trained_hypernet = work / "hypernet_trained.safetensors"
        self.validation = work / "validation"  # links to the dataset's held-out training families
        self.eval = work / "eval"
        self.lone = work / "lone"  # held-out families trained alone: families/ (links), collection/
        self.scale_choice = self.eval / "identity_scale.json"


def python_env(threads: int = 1) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    default_comfy = REPO / ".comfyui" / "ComfyUI"
    if "COMFYUI_PATH" not in env and (default_comfy / "main.py").is_file():
        env["COMFYUI_PATH"] = str(default_comfy)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def start(args: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"  $ python {' '.join(args)}   (log: {log})", flush=True)
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=python_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, log: Path, what: str) -> None:
    if proc.wait() != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"stage {what} failed (exit {proc.returncode}); the end of {log}:\n" + "\n".join(tail))


def run_command(args: list[str], log: Path, what: str) -> None:
    wait(start(args, log), log, what)


def newest_write(roots: list[Path], depth: int = 2) -> float:
    """The newest modification time of `roots` and of what lies up to `depth` folders below them
    (0 when none exists). Every stage writes by creating or renaming entries, which moves the
    time of the folder they are in, so the walk never needs the glyph files of a collection."""
    newest, level = 0.0, [r for r in roots if r.exists()]
    for below in range(depth, -1, -1):
        deeper = []
        for path in level:
            newest = max(newest, path.lstat().st_mtime)
            if below and path.is_dir() and not path.is_symlink():
                deeper.extend(path.iterdir())
        level = deeper
    return newest


def collect_trained(out: Path, since: float) -> bool:
    """Whether a `collect` into `out` since `since` trained any identity (its run file's list)."""
    from hypernet.collect.jobs import RUN_FILE
    run_file = out / RUN_FILE
    if not run_file.is_file() or run_file.stat().st_mtime < since:
        return False
    return bool(json.loads(run_file.read_text()).get("trained"))


class Pipeline:
    def __init__(self, work: Path, font_list: Path, scale: Scale, ship_to: Path | None, results: Path | None):
        self.p, self.font_list, self.scale = Paths(work), font_list, scale
        self.ship_to, self.results = ship_to, results
        self.logs = work / "logs"
        self.timings: dict[str, float] = {}

    # -- stages -----------------------------------------------------------------------------
    def fonts(self):
        run_command(["-m", "miniature", "fetch-fonts", "--list", str(self.font_list)], self.logs / "fonts.log", "fonts")

    def base_and_encoder(self, stages):
        """The two independent trainings side by side, one core each."""
        procs = []
        s = self.scale
        if "base" in stages and not self.p.base.is_file():
            args = ["-m", "miniature.train_base", "--font-list", str(self.font_list), "--out", str(self.p.base),
                    "--preset", s.base_preset, "--size", str(s.glyph_size), "--resume", "--threads", "1",
                    "--samples", str(self.p.work / "glyph_base_samples.png")]
            if s.base_steps:
                args += ["--steps", str(s.base_steps)]
            procs.append(("base", start(args, self.logs / "base.log"), self.logs / "base.log"))
        if "encoder" in stages and not (self.p.recognizer / "typeface_arcface.onnx").is_file():
            args = ["-m", "miniature", "train-encoder", "--list", str(self.font_list), "--out", str(self.p.encoder),
                    "--steps", str(s.encoder_steps)]
            procs.append(("encoder", start(args, self.logs / "encoder.log"), self.logs / "encoder.log"))
        for name, proc, log in procs:
            wait(proc, log, name)

    def identities(self):
        from hypernet.encoders.face import ArcFaceEmbedder

        from .base_model import DEFAULT_CHARSET
        from .font_list import read_list, resolve
        entries = read_list(self.font_list)
        files = resolve(entries)
        embedder = ArcFaceEmbedder(self.p.recognizer, aligned_crops=True)
        from .identities import write_identities
        write_identities(entries, files, self.p.identities, DEFAULT_CHARSET, self.scale.glyph_size, embedder)

    def collect(self):
        from .shared_start import write_shared_start
        if not self.p.shared_start.is_file():
            write_shared_start(self.scale.layout, self.p.shared_start)
        for split in ("train", "heldout"):
            run_command(self.collect_args(self.p.identities / split, self.p.collection / split),
                        self.logs / f"collect_{split}.log", f"collect ({split})")

    def collect_args(self, src: Path, out: Path, identities_per_step: int | None = None,
                     workers: int | None = None) -> list[str]:
        s = self.scale
        return ["-m", "hypernet", "collect", "--src", str(src), "--base", str(self.p.base), "--layout", s.layout,
                "--out", str(out), "--steps", str(s.collect_steps), "--learning-rate", str(s.collect_lr),
                "--batch", str(s.collect_batch), "--seed", "0",
                "--identities-per-step", str(identities_per_step or s.identities_per_step),
                "--workers", str(workers or s.workers), "--eval-draws", str(s.collect_eval_draws),
                "--init", str(self.p.shared_start), "--threads", "1", "--quiet"]

    def dataset(self):
        if (self.p.dataset / "manifest.json").is_file():
            return
        run_command(["-m", "hypernet", "dataset", "--src", str(self.p.collection / "train"), "--out",
                     str(self.p.dataset), "--heldout", str(self.scale.dataset_heldout)],
                    self.logs / "dataset.log", "dataset")

    def train_hypernet(self, out: Path, config: dict, log: str) -> None:
        if out.is_file():
            return
        config_file = out.with_suffix(".config.json")
        config_file.write_text(json.dumps(config, indent=1))
        args = ["-m", "hypernet", "train", "--data", str(self.p.dataset), "--out", str(out), "--config",
                str(config_file), "--quiet"]
        if Path(str(out) + ".resume").exists():
            args.append("--resume")
        run_command(args, self.logs / log, log.removesuffix(".log"))

    def hypernet(self):
        retrained = not self.p.trained_hypernet.is_file()
        self.train_hypernet(self.p.trained_hypernet, self.scale.hypernet_config, "hypernet.log")
        if retrained:  # an earlier scale choice scored another hypernet
            stale = [self.p.hypernet, self.p.scale_choice, *self.p.eval.glob("validation_x*.json"),
                     *(self.p.work / "scales").glob("*.safetensors")]
            for path in stale:
                path.unlink(missing_ok=True)
        if not self.p.hypernet.is_file():
            scale = self.choose_identity_scale()["chosen"]
            self.write_scaled(self.p.trained_hypernet, scale, self.p.hypernet)

    def write_scaled(self, src: Path, scale: float, out: Path) -> None:
        run_command(["-m", "hypernet", "identity-scale", "--ckpt", str(src), "--scale", f"{scale:g}", "--out",
                     str(out), "--overwrite"], self.logs / "identity_scale.log", "identity-scale")

    def validation_families(self) -> Path:
        """Links to the training families the dataset held out from the hypernet's training."""
        manifest = json.loads((self.p.dataset / "manifest.json").read_text())
        ids = sorted(i["id"] for i in manifest["identities"] if i["split"] == "heldout")
        self.p.validation.mkdir(parents=True, exist_ok=True)
        for identity in ids:
            link = self.p.validation / identity
            if not link.exists():
                os.symlink((self.p.collection / "train" / identity).resolve(), link, target_is_directory=True)
        return self.p.validation

    def choose_identity_scale(self) -> dict:
        """Each candidate scale's hypernet LoRAs scored by image on the validation families; the
        highest mean identity similarity wins (the smaller scale on a tie)."""
        if self.p.scale_choice.is_file():
            return json.loads(self.p.scale_choice.read_text())
        families = self.validation_families()
        if not any(families.iterdir()):  # a dataset without a held-out split: nothing to choose on
            return {"chosen": 1.0, "validation_similarity": {}, "validation_families": 0}
        scores = {}
        for scale in self.scale.identity_scales:
            candidate = self.p.work / "scales" / f"hypernet_x{scale:g}.safetensors"
            if not candidate.is_file():
                candidate.parent.mkdir(parents=True, exist_ok=True)
                self.write_scaled(self.p.trained_hypernet, scale, candidate)
            out = self.p.eval / f"validation_x{scale:g}.json"
            self.evaluate_split(out, f"validation_x{scale:g}", candidate, "hypernet", families)
            scores[f"{scale:g}"] = json.loads(out.read_text())["methods"]["hypernet"]["mean"]
        chosen = max(self.scale.identity_scales, key=lambda s: (scores[f"{s:g}"], -s))
        choice = {"chosen": chosen, "validation_similarity": scores, "validation_families": len(list(families.iterdir()))}
        from hypernet.common.files import write_text_atomic
        write_text_atomic(self.p.scale_choice, json.dumps(choice, indent=1) + "\n")
        return choice

    def evaluate_args(self, hypernet: Path, identities: Path, out: Path, methods: str | None = None,
                      grid: bool = False) -> list[str]:
        s = self.scale
        args = ["-m", "hypernet", "evaluate-images", "--base", str(self.p.base), "--identities", str(identities),
                "--embedding-model", str(self.p.recognizer), "--aligned-crops", "--hypernet", str(hypernet),
                "--prompts", *s.prompts, "--seeds", *map(str, s.seeds), "--sample-steps", str(s.sample_steps),
                "--json", str(out), "--threads", "1"]
        if methods:
            return args + ["--methods", methods, "--quiet"]
        args += ["--train-collection", str(self.p.collection / "train"), "--refine-steps", str(s.refine_steps),
                 "--learning-rate", str(s.refine_lr)]
        return args + (["--grid", str(self.p.eval / "grid.png"), "--grid-identities", "8"] if grid else [])

    def evaluate_split(self, out: Path, name: str, hypernet: Path, methods: str | None = None,
                       families: Path | None = None) -> None:
        """One evaluate-images per core over disjoint parts of the held-out families (or of
        `families`), merged."""
        from .eval_parts import merge_files, split_identities
        if out.is_file():
            return
        self.p.eval.mkdir(parents=True, exist_ok=True)
        parts = (split_identities(self.p.collection / "heldout", self.p.eval / "parts", self.scale.workers)
                 if families is None else
                 split_identities(families, self.p.eval / f"parts-{families.name}", self.scale.workers))
        jsons, procs = [], []
        for i, part in enumerate(parts):
            part_json = self.p.eval / f"{name}.part-{i}.json"
            jsons.append(part_json)
            if not part_json.is_file():
                log = self.logs / f"{name}.part-{i}.log"
                procs.append((start(self.evaluate_args(hypernet, part, part_json, methods, grid=i == 0), log), log))
        for proc, log in procs:
            wait(proc, log, name)
        merge_files(jsons, out)

    def evaluate(self):
        """Every method on the held-out families, then the prior's conditioning variants (the
        paper's ADALoRA, gated and not, against our AdaNorm): each its own hypernet from the same
        dataset and config, scored the same way."""
        self.p.eval.mkdir(parents=True, exist_ok=True)
        self.evaluate_split(self.p.eval / "evaluate.json", "evaluate", self.p.hypernet)
        self.train_alone()
        for name, prior in CONDITIONING_VARIANTS.items():
            config = json.loads(json.dumps(self.scale.hypernet_config))
            config["prior"] = {**config.get("prior", {}), **prior}
            trained = self.p.work / f"hypernet_{name}.safetensors"
            self.train_hypernet(trained, config, f"hypernet_{name}.log")
            # the shipped hypernet's identity scale, so that only the conditioning differs
            hypernet = self.p.work / f"hypernet_{name}_scaled.safetensors"
            if not hypernet.is_file():
                self.write_scaled(trained, self.choose_identity_scale()["chosen"], hypernet)
            self.evaluate_split(self.p.eval / f"conditioning_{name}.json", f"evaluate_{name}", hypernet, "hypernet")

    def train_alone(self):
        """The first held-out families trained again with collect's settings but one family per step
        and one worker, on an otherwise idle core: what one new typeface costs a user who has no
        collection to group it with (the report sets the hypernet's sampling time against it)."""
        if self.scale.lone_families < 1:
            return
        families = sorted(p for p in (self.p.identities / "heldout").iterdir() if p.is_dir())
        links = self.p.lone / "families"
        links.mkdir(parents=True, exist_ok=True)
        for family in families[:self.scale.lone_families]:
            if not (links / family.name).exists():
                os.symlink(family.resolve(), links / family.name, target_is_directory=True)
        run_command(self.collect_args(links, self.p.lone / "collection", identities_per_step=1, workers=1),
                    self.logs / "collect_alone.log", "collect (alone)")

    def report(self):
        from .report import write_report
        write_report(self.p, self.scale, self.timings, self.results)

    def ship(self):
        from .ship import ship
        ship(self.p, self.ship_to)

    # -- driver -----------------------------------------------------------------------------
    def did_work(self, stage: str, since: float, seconds: float) -> bool:
        """Whether `stage` wrote anything since `since` (wall clock); report and ship always work.
        collect rewrites its run file even when every family was done, so collections are judged
        by what that file says it trained."""
        from .debian_packages import default_cache
        p = self.p
        if stage == "collect":
            return (newest_write([p.shared_start]) >= since
                    or any(collect_trained(p.collection / split, since) for split in ("train", "heldout")))
        if stage == "evaluate":
            return newest_write([p.eval]) >= since or collect_trained(p.lone / "collection", since)
        outputs = {"fonts": [default_cache()], "base+encoder": [p.base, p.encoder], "identities": [p.identities],
                   "dataset": [p.dataset],
                   "hypernet": [p.trained_hypernet, p.hypernet, p.work / "scales", p.validation, p.eval]}.get(stage)
        return seconds > 1.0 if outputs is None else newest_write(outputs) >= since

    def run(self, stages: tuple[str, ...]) -> None:
        self.p.work.mkdir(parents=True, exist_ok=True)
        timings_file = self.p.work / "timings.json"
        if timings_file.is_file():
            self.timings = json.loads(timings_file.read_text())
        steps = [("fonts", self.fonts), ("base+encoder", lambda: self.base_and_encoder(stages)),
                 ("identities", self.identities), ("collect", self.collect), ("dataset", self.dataset),
                 ("hypernet", self.hypernet), ("evaluate", self.evaluate), ("report", self.report),
                 ("ship", self.ship)]
        for name, step in steps:
            if not set(name.split("+")) & set(stages) or (name == "ship" and self.ship_to is None):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
            started, started_wall = time.perf_counter(), time.time()
            step()
            # Only stages that did work are timed: one that found its work done (a resumed
            # collect checks its families for seconds) keeps the time the work took.
            seconds = time.perf_counter() - started
            if self.did_work(name, started_wall, seconds) or name not in self.timings:
                self.timings[name] = round(seconds, 1)
            timings_file.write_text(json.dumps(self.timings, indent=1))


def main(args) -> int:
    scale = SCALES[args.scale]
    if args.collect_steps:
        scale = replace(scale, collect_steps=args.collect_steps)
    stages = tuple(args.stages.split(",")) if args.stages else STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"--stages: unknown {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    ship_to = None if args.no_ship else Path(args.ship_to or REPO / "models")
    results = None if args.no_results else Path(args.results or REPO / "benchmarks")
    pipeline = Pipeline(Path(args.work), Path(args.font_list or FONT_LIST_FILE), scale, ship_to, results)
    print(f"typeface miniature, scale {args.scale}: {json.dumps(asdict(scale))}", flush=True)
    pipeline.run(stages)
    return 0
