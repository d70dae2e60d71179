"""Train the glyph base model: `python -m miniature.train_base --fonts DIR_OR_FILES... --out FILE`.

A diffusion model on the glyphs of the training families, all families pooled, so it draws an
average typeface. It trains through ComfyUI's own SDXL model class and model_sampling (eps, the
discrete schedule ComfyUI's SDXL uses), with conditioning built by the model's own extra_conds
exactly as KSampler builds it, so what it learns is what the stock KSampler samples.

Seeded and resumable: every `--save-every` steps it writes `FILE.state.safetensors` (weights,
EMA, optimiser, RNG) atomically; `--resume` continues from it bit for bit (same machine kind,
one thread). The glyph model file is written at the end (EMA weights, float16), with a PNG
grid of samples beside it when `--samples` is given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .base_model import DEFAULT_CHARSET, GLYPH_UNET, GlyphModelError, GlyphText
from .pixel_fold import BLACK, SDXL_LATENT_SCALE, glyphs_to_latents

FONT_SUFFIXES = {".ttf", ".otf", ".pfb", ".ttc", ".woff", ".woff2"}
PRESETS = {
    # A real-ish run: about 0.5 s a step at batch 32 on 16x16 glyphs (4x8x8 latents), 1 thread.
    "default": dict(steps=1200, batch=32, lr=1e-3, warmup=100, ema=0.995, save_every=100, offset_noise=0.1),
    # CI: a handful of steps that show the loss going down.
    "ci": dict(steps=12, batch=8, lr=1e-3, warmup=0, ema=0.0, save_every=6, offset_noise=0.1),
}
UNCOND_RATE = 0.1  # how often a glyph trains the empty prompt (classifier-free guidance)
# Offset noise (noise plus a per-channel constant): each latent channel is one pixel of every
# 2x2 block, and a model trained on plain noise left per-channel offsets in its samples,
# which show as checkerboards and stripes over the whole glyph.


def font_files(specs: list[str]) -> list[tuple[Path, int]]:
    """(font file, face index) named directly or found under folders, in sorted order (reproducible)."""
    found = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise GlyphModelError(f"--fonts {spec}: no such file or folder")
    return [(path, 0) for path in found]


def train_families(font_list: str, max_fonts: int) -> list[tuple[Path, int]]:
    """The curated list's TRAIN families (held-out ones never reach the base model), fetched and
    checked by miniature.font_list; the first `max_fonts` by family name when given."""
    from .font_list import FONT_LIST_FILE, read_list, resolve
    entries = sorted((e for e in read_list(Path(font_list) if font_list != "default" else FONT_LIST_FILE)
                      if e.split == "train"), key=lambda e: e.family)
    entries = entries[:max_fonts] if max_fonts else entries
    files = resolve(entries)
    return [(files[e], e.index) for e in entries]


def render_dataset(fonts: list[tuple[Path, int]], charset: str, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(latents [F*C, 4, size/2, size/2], table rows [F*C], font names used); a font that
    cannot draw every character is skipped with a note."""
    from .glyphs import render_glyphs
    latents, rows, used = [], [], []
    for font, index in fonts:
        try:
            glyphs = render_glyphs(font, charset, size, index)
        except OSError as exc:
            print(f"skipping {font}: {exc}", file=sys.stderr)
            continue
        if (glyphs.flatten(1).amax(1) == 0).any():
            print(f"skipping {font}: it draws no ink for some of {charset!r}", file=sys.stderr)
            continue
        latents.append(glyphs_to_latents(glyphs))
        rows.append(torch.arange(1, len(charset) + 1))
        used.append(font.name if not index else f"{font.name}#{index}")
    if not used:
        raise GlyphModelError("no usable font: give --fonts files or folders with fonts that draw every character")
    return torch.cat(latents), torch.cat(rows), used


def init_weights(model, seed: int) -> None:
    """PyTorch's default initialisation (ComfyUI skips it and leaves torch.empty), with the
    last layer of every residual branch and the output zeroed as in Stable Diffusion's UNet,
    so the untrained model starts as identity blocks."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, module in model.diffusion_model.named_modules():
                kind = next((k for k in kinds if isinstance(module, k)), None)
                if kind is None:
                    continue
                kind.reset_parameters(module)
                if name == "out.2" or name.endswith((".out_layers.3", ".proj_out")):
                    module.weight.zero_()
                    module.bias.zero_()


class Trainer:
    """One training run: model, text tables, optimiser, EMA and RNG, saved and restored whole."""

    def __init__(self, args, latents: torch.Tensor, rows: torch.Tensor):
        from .comfy_glyph import build_sdxl
        self.args, self.latents, self.rows = args, latents, rows
        self.model = build_sdxl(GLYPH_UNET, device="cpu")
        init_weights(self.model, args.seed)
        self.text = GlyphText(args.charset, GLYPH_UNET["context_dim"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed + 1)
            torch.nn.init.normal_(self.text.context, std=1.0)
            torch.nn.init.normal_(self.text.pooled, std=1.0)
        self.params = [p for p in self.model.diffusion_model.parameters()] + [self.text.context, self.text.pooled]
        for param in self.params:
            param.requires_grad_(True)  # ComfyUI 0.33 makes its weights frozen Parameters (inference only)
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
        self.ema = [p.detach().clone() for p in self.params]
        self.generator = torch.Generator().manual_seed(args.seed)
        self.step = 0
        self.seconds = 0.0  # training time over all runs of a resumed training

    def loss(self, idx: torch.Tensor, drop: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        model = self.model
        x0 = model.process_latent_in(self.latents[idx])
        sigma = model.model_sampling.sigmas[t]
        xt = model.model_sampling.noise_scaling(sigma, noise, x0)
        rows = torch.where(drop, torch.zeros_like(self.rows[idx]), self.rows[idx])
        context, pooled = self.text.lookup(rows)
        # KSampler's conds: comfy.samplers.encode_model_conds gives extra_conds the latent's size x 8.
        conds = model.extra_conds(cross_attn=context, pooled_output=pooled, width=noise.shape[3] * 8,
                                  height=noise.shape[2] * 8, device=noise.device, noise=noise)
        denoised = model.apply_model(xt, sigma, c_crossattn=conds["c_crossattn"].cond, y=conds["y"].cond)
        eps = (xt - denoised) / sigma.view(-1, 1, 1, 1)
        return torch.nn.functional.mse_loss(eps, noise)

    def draw_batch(self):
        g, n, b = self.generator, self.latents.shape[0], self.args.batch
        idx = torch.randint(n, (b,), generator=g)
        drop = torch.rand(b, generator=g) < UNCOND_RATE
        t = torch.randint(0, 1000, (b,), generator=g)
        noise = torch.randn((b, *self.latents.shape[1:]), generator=g)
        noise += self.args.offset_noise * torch.randn((b, noise.shape[1], 1, 1), generator=g)
        return idx, drop, t, noise

    def train_step(self) -> float:
        args = self.args
        lr = args.lr * min(1.0, (self.step + 1) / args.warmup) if args.warmup else args.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        loss = self.loss(*self.draw_batch())
        if not torch.isfinite(loss):
            raise GlyphModelError(f"the loss became {loss.item()} at step {self.step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        with torch.no_grad():
            for avg, p in zip(self.ema, self.params):
                avg.lerp_(p.detach(), 1.0 - args.ema)
        self.step += 1
        return loss.item()

    @torch.no_grad()
    def eval_loss(self, batches: int = 4, seed: int = 12345) -> float:
        """Mean loss on fixed draws (same noise and timesteps every call), current weights."""
        saved, self.generator = self.generator, torch.Generator().manual_seed(seed)
        try:
            self.model.eval()
            return sum(self.loss(*self.draw_batch()).item() for _ in range(batches)) / batches
        finally:
            self.generator = saved

    # -- saving ----------------------------------------------------------------------------
    def run_description(self) -> dict:
        a = self.args
        return {"fonts": a.font_names, "charset": a.charset, "size": a.size, "batch": a.batch, "lr": a.lr,
                "warmup": a.warmup, "ema": a.ema, "offset_noise": a.offset_noise, "seed": a.seed, "unet_config": GLYPH_UNET}

    def save_state(self, path: Path) -> None:
        from hypernet.common.files import save_safetensors_atomic
        tensors = {f"param.{i}": p.detach() for i, p in enumerate(self.params)}
        tensors.update({f"ema.{i}": e for i, e in enumerate(self.ema)})
        for i, state in self.optimizer.state_dict()["state"].items():
            tensors.update({f"opt.{i}.{k}": v for k, v in state.items()})
        tensors["rng"] = self.generator.get_state()
        save_safetensors_atomic(tensors, path, {"step": str(self.step), "seconds": f"{self.seconds:.1f}",
                                                "run": json.dumps(self.run_description(), sort_keys=True)})

    def load_state(self, path: Path) -> None:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            if json.loads(meta["run"]) != json.loads(json.dumps(self.run_description(), sort_keys=True)):
                raise GlyphModelError(f"{path} was written by a run with other fonts or settings; "
                                      "give the same options as that run, or delete the state file to start afresh")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(tensors[f"param.{i}"])
                self.ema[i].copy_(tensors[f"ema.{i}"])
        state = self.optimizer.state_dict()
        state["state"] = {i: {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
                          for i in range(len(self.params)) if f"opt.{i}.step" in tensors}
        self.optimizer.load_state_dict(state)
        self.generator.set_state(tensors["rng"])
        self.step = int(meta["step"])
        self.seconds = float(meta.get("seconds", 0.0))

    def glyph_model(self):
        from .glyph_model_file import GlyphModelFile
        unet = self.model.diffusion_model
        names = [n for n, _ in unet.named_parameters()]
        state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        state.update({n: e.clone() for n, e in zip(names, self.ema)})  # EMA weights; buffers as they are
        text = GlyphText(self.args.charset, GLYPH_UNET["context_dim"])
        text.context.data, text.pooled.data = self.ema[-2].clone(), self.ema[-1].clone()
        training = dict(self.run_description(), steps=self.step, seconds=round(self.seconds, 1))
        return GlyphModelFile(dict(GLYPH_UNET), state, text, self.args.size, SDXL_LATENT_SCALE, BLACK, "eps", training)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m miniature.train_base", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--fonts", nargs="+", help="font files or folders (searched recursively) of the TRAIN families")
    source.add_argument("--font-list", nargs="?", const="default",
                        help="the train families of the curated font list (miniature/data/fonts.tsv unless a path "
                             "is given); fetches their Debian packages into .cache/fonts")
    parser.add_argument("--out", required=True, help="the glyph model file to write (.safetensors)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--offset-noise", type=float, help="per-channel noise offset (0 for plain noise)")
    parser.add_argument("--size", type=int, default=16, choices=(16, 32), help="glyph size in pixels (latents are half)")
    parser.add_argument("--max-fonts", type=int, default=0, help="use only the first N fonts (0: all)")
    parser.add_argument("--charset", default=DEFAULT_CHARSET)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state.safetensors")
    parser.add_argument("--samples", help="write a PNG grid of samples drawn by the trained file through ComfyUI's sampler")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or .comfyui/ComfyUI)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not args.out.endswith(".safetensors"):
        parser.error("--out must end in .safetensors")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from .comfy_setup import import_comfy
    import_comfy(args.comfyui)
    from hypernet.common.files import save_safetensors_atomic

    from .glyph_model_file import save_glyph_model
    out = Path(args.out)
    state_path = out.with_name(out.name[:-len(".safetensors")] + ".state.safetensors")
    try:
        if args.fonts:
            fonts = font_files(args.fonts)
            fonts = fonts[:args.max_fonts] if args.max_fonts else fonts
        else:
            fonts = train_families(args.font_list, args.max_fonts)
        latents, rows, args.font_names = render_dataset(fonts, args.charset, args.size)
        trainer = Trainer(args, latents, rows)
        if args.resume and state_path.exists():
            trainer.load_state(state_path)
            print(f"resumed at step {trainer.step} from {state_path}")
        elif out.exists() or state_path.exists():
            raise GlyphModelError(f"{out if out.exists() else state_path} exists; pass --resume to continue, or another --out")
    except ValueError as exc:  # GlyphModelError, and the font list's FontDataError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(args.font_names)} fonts, {latents.shape[0]} glyphs at {args.size} px, latents {tuple(latents.shape[1:])}, "
          f"{sum(p.numel() for p in trainer.params) / 1e6:.2f} M parameters, {args.steps} steps at batch {args.batch}, "
          f"{torch.get_num_threads()} thread(s)")
    started, first = time.perf_counter(), trainer.step
    while trainer.step < args.steps:
        tick = time.perf_counter()
        loss = trainer.train_step()
        trainer.seconds += time.perf_counter() - tick
        if trainer.step % max(1, args.steps // 20) == 0 or trainer.step == args.steps:
            per_step = (time.perf_counter() - started) / (trainer.step - first)
            print(f"step {trainer.step}/{args.steps} loss {loss:.4f} ({per_step:.3f} s/step)", flush=True)
        if trainer.step % args.save_every == 0 and trainer.step < args.steps:
            trainer.save_state(state_path)
    trainer.save_state(state_path)
    save_glyph_model(trainer.glyph_model(), out, save=save_safetensors_atomic)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB) after {trainer.step} steps, {trainer.seconds:.0f} s of training")
    if args.samples:
        write_samples(out, Path(args.samples), args.charset)
        print(f"wrote {args.samples}")
    return 0


def write_samples(model_path: Path, png: Path, chars: str, seeds: tuple[int, ...] = (0, 1, 2, 3)) -> None:
    """Rows of `chars`, one row per seed, drawn from the saved file the way ComfyUI draws them."""
    import numpy as np
    from PIL import Image

    from .comfy_glyph import FoldVAE, glyph_model_patcher
    from .glyph_model_file import load_glyph_model
    from .glyph_sampling import draw_glyphs, image_grid
    glyph = load_glyph_model(model_path)
    patcher, vae = glyph_model_patcher(glyph, model_path.name), FoldVAE(glyph.fold())
    rows = [draw_glyphs(patcher, vae, glyph.text, chars, glyph.glyph_size, seed=s) for s in seeds]
    grid = (image_grid(rows).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(np.ascontiguousarray(grid)).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(png)


if __name__ == "__main__":
    sys.exit(main())
