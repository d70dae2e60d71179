"""What one identity LoRA costs with lora_training (ComfyUI's loading, adapters and loss path).

1. Seconds per identity LoRA at the tiny size on this machine: IdentityTrainer on the tiny
   SDXL-architecture stand-in checkpoint (the tests' trainable one), photos -> kohya LoRA.
2. One training step of the same trainer (`train_lora`) on UNets of the real sizes with random
   weights (speed does not depend on the values): SDXL (2.57 B parameters; `sdxl-attn-r4`,
   HyperLoRA's layout) at the smallest resolution, and SD1.5 (`sd15-w2w`, weights2weights'
   rank-1 q/v LoRA) at 512 px, weights2weights' size. Measured seconds and FLOPs per step
   (torch.utils.flop_counter.FlopCounterMode around the step: forward, backward, AdamW).
3. FLOPs of one step at full SDXL size (1024 px), which does not fit this machine: the UNet's
   forward and input-gradient backward counted on PyTorch's meta device (no memory), the work a
   LoRA step does besides the negligible adapter and optimizer updates; row 2's ratio of counted
   step FLOPs to this count at the same small size shows how close the two are.
4. On paper: GPU hours of a 2,000-identity SDXL collection and of weights2weights' 800-step SD1.5
   LoRAs, at an assumed sustained throughput (an argument; say what you assume).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_lora_training.py [--tiny-steps 100] [--skip-real]
"""
from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import _bench

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from hypernet.lora.presets import preset  # noqa: E402

REAL = {"sdxl": (_bench.comfy_support.REAL_SDXL_UNET, "sdxl-attn-r4", 2048, True),
        "sd15": (_bench.comfy_support.SD15_UNET, "sd15-w2w", 768, False)}


def tiny_identity(steps: int, resolution: int, photos: int, work: Path) -> dict:
    import importlib
    importlib.import_module("fixture_nodes")  # the marked stand-in checkpoint loads as the tiny model
    import lora_training as lt
    checkpoint = work / "tiny.safetensors"
    _bench.comfy_support.write_tiny_checkpoint(checkpoint, _bench.comfy_support.TINY_TRAINABLE_CHECKPOINT_MARK)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(photos):
        paths.append(work / f"{i}.png")
        Image.fromarray(rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)).resize((640, 640)).save(paths[-1])
    marks = []
    started = time.perf_counter()
    trainer = lt.IdentityTrainer(checkpoint, preset("tiny-attn-r4"),
                                 lt.TrainingSettings(steps=steps, learning_rate=1e-2, resolution=resolution))
    loaded = time.perf_counter() - started
    result = trainer.train(paths, None, seed=0, progress=lambda done, total: marks.append(time.perf_counter()))
    return dict(load=loaded, result=result, step=_bench.Stats(tuple(b - a for a, b in zip(marks, marks[1:]))))


def build_unet(kind: str, dtype: torch.dtype, device: str = "cpu"):
    """ComfyUI's own SDXL / SD1.5 model class at the real size, weights filled with small noise."""
    comfy = _bench.comfy()
    unet, *_ = REAL[kind]
    config_class, model_class = ((comfy.supported_models.SDXL, comfy.model_base.SDXL) if kind == "sdxl"
                                 else (comfy.supported_models.SD15, comfy.model_base.BaseModel))
    config = config_class(dict(unet))
    config.set_inference_dtype(dtype, None)
    with torch.device(device):
        model = model_class(config, device=device)
    if device != "meta":
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32).to(dtype) * 0.02)
    return model


def conditioning(context_dim: int, pooled: bool) -> list:
    gen = torch.Generator().manual_seed(1)
    extra = {"pooled_output": torch.randn(1, 1280, generator=gen)} if pooled else {}
    return [[torch.randn(1, 77, context_dim, generator=gen), extra]]


def measured_step(kind: str, resolution: int, dtype: torch.dtype, steps: int) -> dict:
    """Seconds and counted FLOPs per training step of train_lora (steps after the first)."""
    import lora_training as lt
    comfy = _bench.comfy()
    _, layout_name, context_dim, pooled = REAL[kind]
    model = build_unet(kind, dtype)
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    latent = torch.randn(1, 4, resolution // 8, resolution // 8, generator=torch.Generator().manual_seed(2))
    marks = []
    with FlopCounterMode(display=False) as counter:
        def progress(done, total):
            marks.append((time.perf_counter(), counter.get_total_flops()))
        marks.append((time.perf_counter(), counter.get_total_flops()))
        lt.train_lora(patcher, latent, [conditioning(context_dim, pooled)], preset(layout_name), steps=steps,
                      learning_rate=1e-4, seed=0, eval_draws=1, progress=progress)
    seconds = [b[0] - a[0] for a, b in zip(marks[1:], marks[2:])]
    flops = [b[1] - a[1] for a, b in zip(marks[1:], marks[2:])]
    params = sum(p.numel() for p in model.parameters())
    del patcher, model
    gc.collect()
    return dict(seconds=_bench.Stats(tuple(seconds)), flops=flops[-1], params=params)


def meta_step_flops(kind: str, resolution: int) -> int:
    """Forward + backward of the UNet on the meta device (shapes only), with gradients of the
    input and of the layout's weights: what backpropagating into a LoRA on them costs."""
    import comfy.lora
    unet, layout_name, context_dim, pooled = REAL[kind]
    model = build_unet(kind, torch.float32, device="meta")
    model.requires_grad_(False)
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    for module in preset(layout_name):
        model.get_parameter(key_map[module.name]).requires_grad_(True)
    x = torch.randn(1, 4, resolution // 8, resolution // 8, device="meta", requires_grad=True)
    t = torch.full((1,), 500.0, device="meta")
    context = torch.randn(1, 77, context_dim, device="meta")
    kwargs = {"y": torch.randn(1, unet["adm_in_channels"], device="meta")} if pooled else {}
    import comfy.ldm.modules.attention as attention
    chosen = attention.optimized_attention
    # ComfyUI's CPU attention (sub-quadratic, chunked by free memory) asks the device for its
    # memory, which meta has not; PyTorch's SDPA does the same matmuls in one call.
    attention.optimized_attention = attention.attention_pytorch
    try:
        with FlopCounterMode(display=False) as counter:
            out = model.diffusion_model(x, t, context=context, **kwargs)
            out.float().pow(2).mean().backward()
    finally:
        attention.optimized_attention = chosen
    return counter.get_total_flops()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny-steps", type=int, default=100)
    parser.add_argument("--tiny-resolution", type=int, default=256)
    parser.add_argument("--tiny-photos", type=int, default=4)
    parser.add_argument("--sd15-resolution", type=int, default=512, help="weights2weights trained at 512 px")
    parser.add_argument("--sdxl-resolution", type=int, default=64, help="smallest that runs; 1024 px is counted on meta")
    parser.add_argument("--sdxl-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="bfloat16 halves the 10 GB of float32 SDXL weights on a 24 GiB machine")
    parser.add_argument("--real-steps", type=int, default=2, help="steps per real-size run; the first is not timed")
    parser.add_argument("--skip-real", action="store_true", help="only the tiny row (for a quick run)")
    parser.add_argument("--assumed-tflops", type=float, default=300.0,
                        help="sustained TFLOP/s assumed for the on-paper GPU-hour estimate")
    parser.add_argument("--identities", type=int, default=2000)
    parser.add_argument("--sdxl-steps-per-identity", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    machine = _bench.machine()

    with tempfile.TemporaryDirectory() as work:
        tiny = tiny_identity(args.tiny_steps, args.tiny_resolution, args.tiny_photos, Path(work))
    r = tiny["result"]
    _bench.heading("LoRA training: seconds per identity LoRA (tiny SDXL-architecture model)", _bench.command_line(),
                   machine)
    _bench.table(("model", "layout", "photos", "resolution", "steps", "checkpoint load s", "train s (incl. 3 loss evals of 4 draws per photo)",
                  "s / step: median (min-max)", "loss base -> trained"),
                 [("tiny SDXL (6.5 M)", "tiny-attn-r4", args.tiny_photos, args.tiny_resolution, r.steps,
                   f"{tiny['load']:.2f}", f"{r.seconds:.1f}", tiny["step"].fmt(digits=3),
                   f"{r.base_loss:.4f} -> {r.loss:.4f}")])
    if args.skip_real:
        return 0

    rows, per_step = [], {}
    for kind, resolution, dtype in (("sd15", args.sd15_resolution, torch.float32),
                                    ("sdxl", args.sdxl_resolution, getattr(torch, args.sdxl_dtype))):
        step = measured_step(kind, resolution, dtype, args.real_steps)
        meta = meta_step_flops(kind, resolution)
        per_step[kind] = step
        rows.append((f"{kind} UNet ({step['params'] / 1e9:.2f} B)", REAL[kind][1], f"{resolution} px", str(dtype)[6:],
                     step["seconds"].fmt(digits=2), f"{step['flops'] / 1e12:.3f}", f"{meta / 1e12:.3f}",
                     f"{step['flops'] / meta:.2f}"))
    sdxl_full = meta_step_flops("sdxl", 1024)
    rows.append(("sdxl UNet (2.57 B)", "sdxl-attn-r4", "1024 px", "-", "does not fit this machine", "-",
                 f"{sdxl_full / 1e12:.2f}", "-"))
    _bench.heading("LoRA training: one step at the real UNet sizes (random weights, batch 1)", _bench.command_line(),
                   _bench.machine())
    _bench.table(("UNet", "layout", "resolution", "dtype", "s / step: median (min-max)", "TFLOP / step (counted)",
                  "TFLOP fwd+bwd (meta count)", "counted / meta"), rows)

    sd15_flops = per_step["sd15"]["flops"] * meta_step_flops("sd15", 512) / meta_step_flops("sd15", args.sd15_resolution)
    ratio = per_step["sdxl"]["flops"] / meta_step_flops("sdxl", args.sdxl_resolution)
    sdxl_step = sdxl_full * ratio
    tflops = args.assumed_tflops * 1e12
    sdxl_hours = args.identities * args.sdxl_steps_per_identity * sdxl_step / tflops / 3600
    w2w_hours = 64_974 * 800 * sd15_flops / tflops / 3600
    _bench.heading(f"LoRA training on paper: GPU hours at an assumed {args.assumed_tflops:g} TFLOP/s sustained",
                   _bench.command_line(), _bench.machine())
    _bench.table(("collection", "identities", "steps each", "TFLOP / step", "GPU hours"),
                 [("SDXL, sdxl-attn-r4, 1024 px, batch 1", args.identities, args.sdxl_steps_per_identity,
                   f"{sdxl_step / 1e12:.2f}", f"{sdxl_hours:.1f}"),
                  ("SD1.5, sd15-w2w, 512 px, batch 1 (weights2weights)", 64_974, 800, f"{sd15_flops / 1e12:.3f}",
                   f"{w2w_hours:.0f}")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
