"""Stand-ins for what cannot exist on a test machine, shared by `make demo` and the
end-to-end tests: generated face models, a tiny hypernet trained on a synthetic collection,
reference photos marked so the generated detector finds a face, and the example workflows
as API prompts with the checkpoint loader swapped for the tiny SDXL- or SD1.5-architecture one.

For the face + global example: a tiny CLIP ViT in models/clip_vision under the ViT-H file name
the workflow names (tests/global_support.py; the test pack teaches the stock loader its size),
and a face+global hypernet trained on a synthetic collection whose global vectors claim to
come from that encoder (its name and weight fingerprint), so the encoder check passes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import global_support
from comfy_support import REPO
from face_models import draw_face, write_face_models
from workflow_api import workflow_to_prompt

WORKFLOWS = REPO / "example_workflows"
FACE_MODEL = "antelopev2"
HYPERNET_FILE = "lora_hypernet_sdxl.safetensors"
HYPERNET_FACE_GLOBAL_FILE = "lora_hypernet_sdxl_face_global.safetensors"
CLIP_VISION_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"  # the name the workflow uses
TYPEFACE_REFERENCE = "reference_typeface.png"  # a held-out family's specimen sheet (miniature/reference.py)
# Where each shipped photo's face is (x, y, side in pixels) and which synthetic identity the
# generated detector and recogniser will see there.
PHOTO_FACES = {"reference_astronaut.jpg": (168, 50, 100, 1), "reference_cameraman.jpg": (225, 55, 80, 2)}
# The tiny SDXL-architecture UNet's attention layout (tests/comfy_support.TINY_SDXL_UNET).
TINY_LAYOUT = "tiny-attn-r4"
# The SD1.5 example: weights2weights' layout on the tiny SD1.5 UNet (comfy_support.TINY_SD15_UNET).
HYPERNET_SD15_FILE = "lora_hypernet_sd15_w2w.safetensors"
TINY_SD15_LAYOUT = "tiny-sd15-w2w"


def python_m(*args: str, cwd: Path = REPO) -> None:
    """Run `python -m hypernet ...` as a user would, failing loudly with its output."""
    proc = subprocess.run([sys.executable, "-m", "hypernet", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m hypernet {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def face_model_name(face_dir: Path) -> str:
    """The name Face Embed will report for this face model folder; the hypernet must match it."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
    from hypernet.encoders.face import load_face_analyzer
    return load_face_analyzer(face_dir).name


def train_tiny_hypernet(work: Path, embedding_model: str, identities: int = 96, layout: str = TINY_LAYOUT,
                        filename: str = HYPERNET_FILE) -> Path:
    """synth -> dataset -> train with the tiny preset; returns the checkpoint path."""
    work.mkdir(parents=True, exist_ok=True)
    python_m("synth", "--layout", layout, "--identities", str(identities), "--out", str(work / "collection"),
             "--embedding-model", embedding_model, "--seed", "0")
    python_m("dataset", "--src", str(work / "collection"), "--out", str(work / "dataset"))
    ckpt = work / filename
    python_m("train", "--data", str(work / "dataset"), "--out", str(ckpt), "--config", "tiny", "--seed", "0")
    return ckpt


def train_w2w_hypernet(work: Path, face_dir: Path, identities: int = 96, filename: str = HYPERNET_SD15_FILE) -> Path:
    """The SD1.5 example's hypernet the way the README tells a user to make one: weights2weights-
    format files (tests/w2w_support.py) -> import-w2w -> dataset (faces through the face models
    in `face_dir`) -> train with the tiny preset; returns the checkpoint path."""
    if str(REPO) not in sys.path:  # `make demo` runs from scripts/: the library is imported here
        sys.path.append(str(REPO))
    from w2w_support import write_w2w_source
    work.mkdir(parents=True, exist_ok=True)
    files, images = write_w2w_source(work / "w2w", TINY_SD15_LAYOUT, identities)
    python_m("import-w2w", "--weights", str(files), "--images", str(images), "--out", str(work / "collection"),
             "--layout", TINY_SD15_LAYOUT, "--quiet")
    python_m("dataset", "--src", str(work / "collection"), "--out", str(work / "dataset"), "--layout",
             TINY_SD15_LAYOUT, "--face-model", str(face_dir), "--seed", "0")
    ckpt = work / filename
    python_m("train", "--data", str(work / "dataset"), "--out", str(ckpt), "--config", "tiny", "--seed", "0")
    return ckpt


def stamp_global_files(collection: Path, encoder: dict) -> None:
    """Label a synthetic collection's global vectors as features of `encoder` (name and weight
    fingerprint), as if they had been computed with it."""
    from safetensors.torch import load_file, save_file
    for path in sorted(collection.glob("*/global.safetensors")):
        save_file(load_file(str(path)), str(path), {"embedding_model": encoder["name"],
                                                   "encoder_fingerprint": encoder["fingerprint"]})


def train_face_global_hypernet(work: Path, embedding_model: str, encoder: dict, identities: int = 96) -> Path:
    """Like train_tiny_hypernet, with global vectors the LoRAs depend on and condition face+global."""
    work.mkdir(parents=True, exist_ok=True)
    python_m("synth", "--layout", TINY_LAYOUT, "--identities", str(identities), "--out", str(work / "collection"),
             "--embedding-model", embedding_model, "--seed", "0", "--global-dim", str(encoder["dim"]),
             "--depends", "face+global", "--global-model", encoder["name"])
    stamp_global_files(work / "collection", encoder)
    python_m("dataset", "--src", str(work / "collection"), "--out", str(work / "dataset"))
    ckpt = work / HYPERNET_FACE_GLOBAL_FILE
    python_m("train", "--data", str(work / "dataset"), "--out", str(ckpt), "--config", "tiny", "--seed", "0",
             "--condition", "face+global")
    return ckpt


def install_models(base: Path, hypernet_ckpt: Path | None = None, work: Path | None = None,
                   face_global_ckpt: Path | None = None, with_global: bool = False,
                   sd15_ckpt: Path | None = None) -> dict:
    """Fill a ComfyUI base directory: face models, the SDXL and SD1.5 hypernets, marked reference
    photos; with `with_global` also the tiny CLIP vision file and the face+global hypernet."""
    models = base / "models"
    face_dir = models / "insightface" / "models" / FACE_MODEL
    write_face_models(face_dir)
    work = work or base / "hypernet_training"
    if hypernet_ckpt is None:
        hypernet_ckpt = train_tiny_hypernet(work, face_model_name(face_dir))
    target = models / "lora_hypernets" / HYPERNET_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(hypernet_ckpt, target)
    installed = {"hypernet": target, "hypernet_sd15": models / "lora_hypernets" / HYPERNET_SD15_FILE}
    if sd15_ckpt is None:
        sd15_ckpt = train_w2w_hypernet(work / "sd15", face_dir)
    shutil.copyfile(sd15_ckpt, installed["hypernet_sd15"])
    if with_global:
        clip_dir = models / "clip_vision"
        clip_dir.mkdir(parents=True, exist_ok=True)
        global_support.write_comfy_file(clip_dir / CLIP_VISION_FILE)
        if face_global_ckpt is None:
            face_global_ckpt = train_face_global_hypernet(work / "face_global", face_model_name(face_dir),
                                                          global_support.tiny_encoder_info())
        installed["hypernet_face_global"] = models / "lora_hypernets" / HYPERNET_FACE_GLOBAL_FILE
        shutil.copyfile(face_global_ckpt, installed["hypernet_face_global"])
    (base / "input").mkdir(parents=True, exist_ok=True)
    for name, (x, y, side, identity) in PHOTO_FACES.items():
        photo = np.array(Image.open(WORKFLOWS / name).convert("RGB"))
        Image.fromarray(draw_face(photo, x, y, side, identity)).save(base / "input" / name)
    # The typeface example runs on the pack's shipped models/ (the trained miniature) and its
    # specimen sheet as it is: nothing to stand in for.
    shutil.copyfile(WORKFLOWS / TYPEFACE_REFERENCE, base / "input" / TYPEFACE_REFERENCE)
    return installed


CHECKPOINT_FILE = "sd_xl_base_1.0.safetensors"  # the name the example workflows use
CHECKPOINT_SD15_FILE = "realisticVisionV51_v51VAE.safetensors"  # the SD1.5 example's (weights2weights' base)


def install_tiny_checkpoint(base: Path) -> Path:
    """Marked stand-ins under the workflows' checkpoint names, which the test pack's patched
    CheckpointLoaderSimple loads as the tiny SDXL- and SD1.5-architecture models
    (tests/fixture_nodes), so the shipped workflows run unchanged, e.g. from the frontend."""
    from comfy_support import TINY_SD15_CHECKPOINT_MARK, write_tiny_checkpoint
    path = base / "models" / "checkpoints" / CHECKPOINT_FILE
    write_tiny_checkpoint(path)
    write_tiny_checkpoint(path.parent / CHECKPOINT_SD15_FILE, TINY_SD15_CHECKPOINT_MARK)
    return path


def example_prompt(name: str, object_info: dict, image_size: int | None = None) -> dict:
    """The example workflow as an API prompt, with the tiny checkpoint loader swapped in and,
    if given, a smaller image size (tests only need the graph to run, not 1024 px pictures)."""
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    prompt = workflow_to_prompt(workflow, object_info)
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            sd15 = node["inputs"].get("ckpt_name") == CHECKPOINT_SD15_FILE
            node["class_type"] = "TinySD15CheckpointLoader" if sd15 else "TinySDXLCheckpointLoader"
        if image_size and node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=image_size, height=image_size)
        if image_size and node["class_type"] == "LoraHypernetRefineLoRA":  # it trains at this size
            node["inputs"].update(resolution=image_size)
    return prompt


def example_workflow_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))
