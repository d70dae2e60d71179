"""Writes example_workflows/*.json (ComfyUI UI format).

The node definitions come from a real ComfyUI's /object_info (started headless through the
test harness), so sockets, widget order and types are exactly what the frontend expects.
Run after changing a node's inputs: `.venv/bin/python scripts/build_example_workflows.py`,
then `make thumbnails` for their .jpg thumbnails (screenshots from the real frontend).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from comfy_support import ComfyServer  # noqa: E402

OUT = REPO / "example_workflows"
CHECKPOINT = "sd_xl_base_1.0.safetensors"
HYPERNET = "lora_hypernet_sdxl.safetensors"
# SD1.5: Realistic Vision 5.1, the base of weights2weights' LoRAs, and a hypernet trained on them
# (README: from weights2weights to a hypernet); 512 px, SD1.5's size.
SD15 = dict(checkpoint="realisticVisionV51_v51VAE.safetensors", hypernet="lora_hypernet_sd15_w2w.safetensors",
            size=512)
# DiffLoRA-style: conditioned on the face and on CLIP image features (ViT-H/14, as IPAdapter uses)
HYPERNET_FACE_GLOBAL = "lora_hypernet_sdxl_face_global.safetensors"
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
GUIDANCE = 3.0
FACE_MODEL = "antelopev2"
PHOTO_A = "reference_astronaut.jpg"
PHOTO_B = "reference_cameraman.jpg"
POSITIVE = "cinematic portrait photo of a person, soft window light, 85mm, detailed skin"
NEGATIVE = "blurry, lowres, deformed, cartoon"
REFINE_CAPTION = "a photo of sks person"  # the caption collect trains identity LoRAs with
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# The typeface miniature (issue 17), shipped in the pack's models/: a specimen sheet of a held-out
# family goes into Face Embed like a photo; the glyph model draws with and without its LoRA.
TYPEFACE = dict(reference="reference_typeface.png", analyzer="typeface", hypernet="typeface_hypernet.safetensors",
                glyph_model="typeface_glyphs.safetensors", characters="Hamburgefonstiv")


class Graph:
    def __init__(self, object_info: dict):
        self.info = object_info
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, kind: str, pos: tuple[int, int], widgets: list, title: str | None = None, size=(320, 130)) -> dict:
        info = self.info[kind]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        sockets = [{"name": n, "type": s[0], "link": None} for n, s in specs.items()
                   if not (isinstance(s[0], list) or s[0] in WIDGET_TYPES)]
        outputs = [{"name": name, "type": typ, "links": [], "slot_index": i}
                   for i, (name, typ) in enumerate(zip(info["output_name"], info["output"]))]
        node = {"id": len(self.nodes) + 1, "type": kind, "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": sockets, "outputs": outputs,
                "properties": {"Node name for S&R": kind}, "widgets_values": widgets}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, src: dict, output: str, dst: dict, input_name: str) -> None:
        slot = next(o for o in src["outputs"] if o["name"] == output)
        target = next(i for i, s in enumerate(dst["inputs"]) if s["name"] == input_name)
        link_id = len(self.links) + 1
        self.links.append([link_id, src["id"], slot["slot_index"], dst["id"], target, slot["type"]])
        slot["links"].append(link_id)
        dst["inputs"][target]["link"] = link_id

    def to_json(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}}, "version": 0.4}


def sdxl_tail(g: Graph, lora_node: dict, x: int, checkpoint: str = CHECKPOINT, size: int = 1024) -> dict:
    """Checkpoint, Apply LoRA, prompts, KSampler, decode and save: the part every example shares."""
    apply = g.add("LoraHypernetApplyLoRA", (x, 0), [1.0, 1.0])
    ckpt = g.add("CheckpointLoaderSimple", (x, 170), [checkpoint], size=(320, 100))
    g.link(ckpt, "MODEL", apply, "model")
    g.link(lora_node, "lora", apply, "lora")
    pos = g.add("CLIPTextEncode", (x, 310), [POSITIVE], title="Positive", size=(320, 160))
    neg = g.add("CLIPTextEncode", (x, 510), [NEGATIVE], title="Negative", size=(320, 120))
    g.link(ckpt, "CLIP", pos, "clip")
    g.link(ckpt, "CLIP", neg, "clip")
    latent = g.add("EmptyLatentImage", (x, 670), [size, size, 1], size=(320, 110))
    sampler = g.add("KSampler", (x + 380, 0), [42, "fixed", 20, 6.0, "euler", "normal", 1.0], size=(320, 262))
    g.link(apply, "MODEL", sampler, "model")
    g.link(pos, "CONDITIONING", sampler, "positive")
    g.link(neg, "CONDITIONING", sampler, "negative")
    g.link(latent, "LATENT", sampler, "latent_image")
    decode = g.add("VAEDecode", (x + 760, 0), [], size=(220, 60))
    g.link(sampler, "LATENT", decode, "samples")
    g.link(ckpt, "VAE", decode, "vae")
    save = g.add("SaveImage", (x + 760, 100), ["lora_hypernet/portrait"], size=(340, 380))
    g.link(decode, "IMAGE", save, "images")
    return apply


def face_branch(g: Graph, photo: str, y: int, analyzer: dict) -> dict:
    image = g.add("LoadImage", (0, y), [photo, "image"], size=(320, 320))
    embed = g.add("LoraHypernetFaceEmbed", (380, y), [False, "detect the largest face"], size=(320, 100))
    g.link(analyzer, "face_analyzer", embed, "face_analyzer")
    g.link(image, "IMAGE", embed, "images")
    preview = g.add("PreviewImage", (380, y + 140), [], title="Face used", size=(220, 220))
    g.link(embed, "face_crops", preview, "images")
    return embed


def sample_and_decode(g: Graph, face: dict, x: int, global_features: dict | None = None,
                      hypernet: str = HYPERNET) -> dict:
    hyper = g.add("LoraHypernetLoad", (x, 0), [HYPERNET_FACE_GLOBAL if global_features else hypernet])
    sample = g.add("LoraHypernetSample", (x, 140), [0, "fixed", 25, GUIDANCE, 0.0], size=(320, 180))
    g.link(hyper, "hypernet", sample, "hypernet")
    g.link(face, "face_embedding", sample, "face_embedding")
    if global_features:
        g.link(global_features, "global_features", sample, "global_features")
    decode = g.add("LoraHypernetDecode", (x, 360), [], size=(320, 70))
    g.link(hyper, "hypernet", decode, "hypernet")
    g.link(sample, "lora_latent", decode, "lora_latent")
    return decode


def portrait(info: dict, save_lora: bool, sd15: bool = False) -> Graph:
    g = Graph(info)
    analyzer = g.add("LoraHypernetLoadFaceAnalyzer", (0, -140), [FACE_MODEL, "CPU"], size=(320, 90))
    face = face_branch(g, PHOTO_A, 0, analyzer)
    decode = sample_and_decode(g, face, 760, hypernet=SD15["hypernet"] if sd15 else HYPERNET)
    if sd15:
        sdxl_tail(g, decode, 1140, SD15["checkpoint"], SD15["size"])
    else:
        sdxl_tail(g, decode, 1140)
    if save_lora:
        saver = g.add("LoraHypernetSaveLoRA", (760, 470), ["hypernet/astronaut", "loras"], size=(320, 100))
        g.link(decode, "lora", saver, "lora")
    return g


def portrait_refined(info: dict) -> Graph:
    """HyperDreamBooth's hypernet + fast fine-tune: the sampled LoRA trained 50 steps on the photo."""
    g = Graph(info)
    analyzer = g.add("LoraHypernetLoadFaceAnalyzer", (0, -140), [FACE_MODEL, "CPU"], size=(320, 90))
    face = face_branch(g, PHOTO_A, 0, analyzer)
    decode = sample_and_decode(g, face, 760)
    refine = g.add("LoraHypernetRefineLoRA", (760, 470), [50, 0.001, 0, "fixed", 1024], size=(320, 250))
    apply = sdxl_tail(g, refine, 1140)
    ckpt = next(n for n in g.nodes if n["type"] == "CheckpointLoaderSimple")
    caption = g.add("CLIPTextEncode", (380, 820), [REFINE_CAPTION], title="Caption of the photos", size=(320, 120))
    g.link(ckpt, "CLIP", caption, "clip")
    g.link(ckpt, "MODEL", refine, "model")
    g.link(ckpt, "VAE", refine, "vae")
    g.link(caption, "CONDITIONING", refine, "positive")
    g.link(next(n for n in g.nodes if n["type"] == "LoadImage"), "IMAGE", refine, "images")
    g.link(decode, "lora", refine, "lora")
    assert apply["inputs"][1]["link"] is not None
    return g


def identity_mix(info: dict) -> Graph:
    g = Graph(info)
    analyzer = g.add("LoraHypernetLoadFaceAnalyzer", (0, -140), [FACE_MODEL, "CPU"], size=(320, 90))
    face_a = face_branch(g, PHOTO_A, 0, analyzer)
    face_b = face_branch(g, PHOTO_B, 420, analyzer)
    mix = g.add("LoraHypernetMixIdentities", (380, 820), [0.5], size=(320, 100))
    g.link(face_a, "face_embedding", mix, "face_a")
    g.link(face_b, "face_embedding", mix, "face_b")
    decode = sample_and_decode(g, mix, 760)
    sdxl_tail(g, decode, 1140)
    return g


def face_and_global(info: dict) -> Graph:
    """DiffLoRA's condition: the face (ArcFace) and global CLIP image features of the same photo."""
    g = Graph(info)
    analyzer = g.add("LoraHypernetLoadFaceAnalyzer", (0, -140), [FACE_MODEL, "CPU"], size=(320, 90))
    face = face_branch(g, PHOTO_A, 0, analyzer)
    image = next(n for n in g.nodes if n["type"] == "LoadImage")
    clip_vision = g.add("CLIPVisionLoader", (0, 400), [CLIP_VISION], size=(320, 80))
    encode = g.add("LoraHypernetEncodeGlobalFeatures", (380, 400), [], size=(360, 70))
    g.link(clip_vision, "CLIP_VISION", encode, "clip_vision")
    g.link(image, "IMAGE", encode, "images")
    decode = sample_and_decode(g, face, 760, global_features=encode)
    sdxl_tail(g, decode, 1140)
    return g


def typeface(info: dict) -> Graph:
    """Issue 17's miniature: one specimen sheet -> hypernet LoRA -> the stock KSampler draws glyphs in
    that typeface; the same seed without the LoRA below, for comparison."""
    g = Graph(info)
    analyzer = g.add("LoraHypernetLoadFaceAnalyzer", (0, -140), [TYPEFACE["analyzer"], "CPU"], size=(320, 90))
    image = g.add("LoadImage", (0, 0), [TYPEFACE["reference"], "image"], title="Specimen of the typeface",
                  size=(320, 320))
    embed = g.add("LoraHypernetFaceEmbed", (380, 0), [False, "whole image is the aligned crop"], size=(320, 100))
    g.link(analyzer, "face_analyzer", embed, "face_analyzer")
    g.link(image, "IMAGE", embed, "images")
    decode = sample_and_decode(g, embed, 760, hypernet=TYPEFACE["hypernet"])
    glyphs = g.add("LoraHypernetLoadGlyphModel", (1140, 170), [TYPEFACE["glyph_model"]], size=(320, 100))
    apply = g.add("LoraHypernetApplyLoRA", (1140, 0), [1.0, 1.0])
    g.link(glyphs, "MODEL", apply, "model")
    g.link(decode, "lora", apply, "lora")
    prompt = g.add("LoraHypernetGlyphPrompt", (1140, 310), [TYPEFACE["characters"]], size=(320, 100))
    g.link(glyphs, "glyph text", prompt, "glyph_text")
    for row, (model, label, title) in enumerate(((apply, "hypernet", "With the typeface's LoRA"),
                                                 (glyphs, "base", "Base model, same seed"))):
        y = row * 420
        sampler = g.add("KSampler", (1520, y), [42, "fixed", 20, 3.0, "euler", "normal", 1.0], title=title,
                        size=(320, 262))
        g.link(model, "MODEL", sampler, "model")
        g.link(prompt, "positive", sampler, "positive")
        g.link(prompt, "negative", sampler, "negative")
        g.link(prompt, "LATENT", sampler, "latent_image")
        vae_decode = g.add("VAEDecode", (1900, y), [], size=(220, 60))
        g.link(sampler, "LATENT", vae_decode, "samples")
        g.link(glyphs, "VAE", vae_decode, "vae")
        sheet = g.add("LoraHypernetGlyphSheet", (1900, y + 100), [0, 4], size=(260, 100))
        g.link(vae_decode, "IMAGE", sheet, "images")
        save = g.add("SaveImage", (2200, y), [f"lora_hypernet/typeface_{label}"], title=title, size=(900, 200))
        g.link(sheet, "IMAGE", save, "images")
    return g


def main() -> int:
    with tempfile.TemporaryDirectory() as base, ComfyServer(Path(base)) as server:
        info = server.get("/object_info")
    graphs = {
        "portrait_from_one_photo": portrait(info, save_lora=False),
        "portrait_and_save_lora": portrait(info, save_lora=True),
        "sd15_portrait_from_one_photo": portrait(info, save_lora=False, sd15=True),
        "identity_mix": identity_mix(info),
        "portrait_refined_lora": portrait_refined(info),
        "portrait_face_and_global_features": face_and_global(info),
        "typeface_from_one_specimen": typeface(info),
    }
    for name, graph in graphs.items():
        workflow = graph.to_json()
        (OUT / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
        print(f"wrote example_workflows/{name}.json ({len(workflow['nodes'])} nodes)")
    print("now `make thumbnails` for their thumbnails")
    return 0


if __name__ == "__main__":
    sys.exit(main())
