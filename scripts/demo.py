"""`make demo`: an example workflow end to end in a headless ComfyUI, with this pack.

Default: the typeface miniature (issue 17), on the trained files the pack ships in models/: a
held-out typeface's specimen sheet (example_workflows/reference_typeface.png, a family no model
saw in training) goes into Face Embed, the hypernet samples a LoRA for it, and the stock KSampler
draws "Hamburgefonstiv" with and without that LoRA, same seed. The demo writes
demo_out/typeface_demo.png: the reference, the glyphs with the typeface's LoRA, the base model's.

`--workflow portrait_and_save_lora` runs the first portrait example instead, on the embedded
stand-ins (the tiny SDXL-architecture UNet, generated face models and a tiny hypernet trained
here on a synthetic collection): that one checks the machinery, its picture is noise.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(1, str(REPO))
import demo_assets  # noqa: E402
from comfy_support import ComfyServer  # noqa: E402

OUT = REPO / "demo_out"
TYPEFACE = "typeface_from_one_specimen"
PORTRAIT = "portrait_and_save_lora"  # the first example, plus Save LoRA so the LoRA file is written


def source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((REPO / "hypernet").rglob("*.py")) + [REPO / "tests" / "demo_assets.py"]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tiny_hypernet(face_model: str) -> tuple[Path, float]:
    work = OUT / "hypernet_training"
    ckpt, stamp = work / demo_assets.HYPERNET_FILE, work / "source-hash"
    if ckpt.is_file() and stamp.is_file() and stamp.read_text() == source_hash():
        return ckpt, 0.0
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    demo_assets.train_tiny_hypernet(work, face_model)
    stamp.write_text(source_hash())
    return ckpt, time.monotonic() - started


def prepare_portrait(base: Path) -> None:
    from face_models import write_face_models
    face_dir = OUT / "face_models" / demo_assets.FACE_MODEL
    write_face_models(face_dir)
    print("training the tiny hypernet on a synthetic collection (cached after the first run) ...", flush=True)
    ckpt, train_s = tiny_hypernet(demo_assets.face_model_name(face_dir))
    print(f"  {'trained in %.1f s' % train_s if train_s else 'cached'}: {ckpt.relative_to(REPO)}")
    demo_assets.install_models(base, hypernet_ckpt=ckpt)


def prepare_typeface(base: Path) -> None:
    from miniature.ship import shipped_paths
    missing = [str(p.relative_to(REPO)) for p in shipped_paths(REPO / "models").values() if not p.exists()]
    if missing:
        raise SystemExit(f"the shipped miniature is missing ({', '.join(missing)}): run `make miniature` to train it")
    (base / "input").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(demo_assets.WORKFLOWS / demo_assets.TYPEFACE_REFERENCE, base / "input" / demo_assets.TYPEFACE_REFERENCE)


def labelled(image: np.ndarray, label: str, width: int) -> np.ndarray:
    from hypernet.common.images import draw_text
    row = np.full((image.shape[0] + 16, width, 3), 255, np.uint8)
    row[16:, :image.shape[1]] = image[:, :width]
    return draw_text(row, (2, 2), label, fill=(0, 0, 0))


def typeface_picture(reference: Path, drawn: dict[str, Path], out: Path) -> None:
    """The reference sheet above the two rows the workflow saved, labelled: one picture to judge."""
    from hypernet.common.images import write_png_atomic
    rows = {k: np.asarray(Image.open(p).convert("RGB")) for k, p in drawn.items()}
    sheet = np.asarray(Image.open(reference).convert("RGB").resize((256, 256), Image.Resampling.NEAREST))
    width = max([sheet.shape[1], *(r.shape[1] for r in rows.values())])
    parts = [labelled(sheet, "reference: specimen sheet of a held-out typeface", width),
             labelled(rows["hypernet"], "with the LoRA the hypernet sampled for it (seconds, no training)", width),
             labelled(rows["base"], "base model, same seed, no LoRA", width)]
    write_png_atomic(out, np.concatenate(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=TYPEFACE, choices=(TYPEFACE, PORTRAIT))
    workflow = parser.parse_args().workflow
    base = OUT / "comfy_base"
    shutil.rmtree(base, ignore_errors=True)
    (prepare_typeface if workflow == TYPEFACE else prepare_portrait)(base)
    with ComfyServer(base, fixture_nodes=workflow == PORTRAIT) as server:
        info = server.get("/object_info")
        prompt = demo_assets.example_prompt(workflow, info)
        print(f"running example_workflows/{workflow}.json in ComfyUI at {server.url} ...", flush=True)
        started = time.monotonic()
        entry, timings = server.run_prompt(prompt)
        total = time.monotonic() - started
        if entry["status"]["status_str"] != "success":
            print(server.log()[-4000:])
            print(f"the workflow failed: {entry['status']}")
            return 1
    print(f"\n{'stage':<50}{'node':>6}{'seconds':>10}")
    for node_id, seconds in timings:
        node = prompt[node_id]["class_type"]
        title = info[node]["display_name"] if node in info else node
        print(f"{title:<50}{node_id:>6}{seconds:>10.3f}")
    print(f"{'whole workflow':<56}{total:>10.3f}")
    images = [base / "output" / i["subfolder"] / i["filename"] for o in entry["outputs"].values() for i in o.get("images", [])
              if i["type"] == "output"]
    written = images + sorted((base / "models" / "loras").rglob("*.safetensors"))
    if workflow == TYPEFACE:
        drawn = {kind: next(p for p in images if f"typeface_{kind}" in p.name) for kind in ("hypernet", "base")}
        picture = OUT / "typeface_demo.png"
        typeface_picture(base / "input" / demo_assets.TYPEFACE_REFERENCE, drawn, picture)
        written.append(picture)
    print("\nwrote:")
    for path in written:
        print(f"  {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
