"""`make demo`: the first example workflow, end to end, in a headless ComfyUI.

No SDXL checkpoint or insightface model can be downloaded here, so the demo runs on the
embedded default: the tiny SDXL-architecture UNet (same blocks and conditioning as SDXL, 6.5 M
parameters), generated face models, and a tiny hypernet trained on a synthetic collection
right here (cached in demo_out/ until hypernet/ changes). The example's reference photo gets
a synthetic face marker, which is what the generated detector finds. Everything else is the
shipped workflow, run by a real ComfyUI 0.3.75 server with this pack: it writes the image,
the LoRA file and prints how long each stage took.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import demo_assets  # noqa: E402
from comfy_support import ComfyServer  # noqa: E402

OUT = REPO / "demo_out"
WORKFLOW = "portrait_and_save_lora"  # the first example, plus Save LoRA so the LoRA file is written


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


def main() -> int:
    base = OUT / "comfy_base"
    shutil.rmtree(base, ignore_errors=True)
    from face_models import write_face_models
    face_dir = OUT / "face_models" / demo_assets.FACE_MODEL
    write_face_models(face_dir)
    print("training the tiny hypernet on a synthetic collection (cached after the first run) ...", flush=True)
    ckpt, train_s = tiny_hypernet(demo_assets.face_model_name(face_dir))
    print(f"  {'trained in %.1f s' % train_s if train_s else 'cached'}: {ckpt.relative_to(REPO)}")
    demo_assets.install_models(base, hypernet_ckpt=ckpt)
    with ComfyServer(base, fixture_nodes=True) as server:
        info = server.get("/object_info")
        prompt = demo_assets.example_prompt(WORKFLOW, info)
        print(f"running example_workflows/{WORKFLOW}.json in ComfyUI at {server.url} ...", flush=True)
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
    loras = sorted((base / "models" / "loras").rglob("*.safetensors"))
    print("\nwrote:")
    for path in images + loras:
        print(f"  {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
