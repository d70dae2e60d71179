"""Every shipped example workflow runs end to end in a real ComfyUI server.

Substituted, because they cannot exist here: the checkpoint loader (the tiny SDXL-architecture
MODEL with a CLIP and VAE of matching shapes), the insightface model files (generated ONNX
models, routed by insightface like the real ones) and the hypernet (trained in this session
on a synthetic collection for the tiny UNet's layout). Everything else runs as shipped.
"""
import json

import pytest

import demo_assets
from comfy_support import FINISHED

TEST_IMAGE_SIZE = 256  # the shipped 1024 px run in `make demo`; here the graph matters, not the picture


@pytest.fixture(scope="session")
def object_info(comfy_server, installed):
    return comfy_server.get("/object_info")


def test_every_workflow_has_a_thumbnail_and_uses_only_core_and_pack_nodes(pack):
    names = demo_assets.example_workflow_names()
    assert len(names) >= 3
    for name in names:
        assert (demo_assets.WORKFLOWS / f"{name}.jpg").is_file(), f"{name} has no thumbnail"
        workflow = json.loads((demo_assets.WORKFLOWS / f"{name}.json").read_text())
        for node in workflow["nodes"]:
            kind = node["type"]
            assert kind in pack.nodes.node_ids() or not kind.startswith("LoraHypernet"), kind
            assert kind != "TinySDXLCheckpointLoader"


@pytest.mark.parametrize("name", demo_assets.example_workflow_names())
def test_example_workflow_runs_and_writes_its_outputs(comfy_server, object_info, name):
    prompt = demo_assets.example_prompt(name, object_info, TEST_IMAGE_SIZE)
    entry, timings = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    ran = {node for node, _ in timings}
    assert {k for k, v in prompt.items() if v["class_type"].startswith("LoraHypernet")} <= ran | _cached(entry)
    images = [img for out in entry["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert images, "SaveImage wrote nothing"
    for img in images:
        path = comfy_server.base_dir / "output" / img["subfolder"] / img["filename"]
        assert path.is_file() and path.stat().st_size > 1000
    savers = [k for k, v in prompt.items() if v["class_type"] == "LoraHypernetSaveLoRA"]
    for key in savers:
        (text,) = entry["outputs"][key]["text"]
        folder, rel = text.removeprefix("saved ").split("/", 1)
        root = comfy_server.base_dir / ("models/loras" if folder == "loras" else "output")
        assert (root / rel).is_file()


def _cached(entry) -> set:
    cached = set()
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_cached":
            cached.update(data.get("nodes", []))
    return cached


def test_cancel_during_sample_lora_stops_it_and_the_server_keeps_working(comfy_server, object_info):
    prompt = demo_assets.example_prompt("portrait_from_one_photo", object_info, TEST_IMAGE_SIZE)
    sample_id = next(k for k, v in prompt.items() if v["class_type"] == "LoraHypernetSample")
    prompt[sample_id]["inputs"]["steps"] = 1000
    prompt[sample_id]["inputs"]["seed"] = 12345  # not cached from the other tests
    progress, outcome = [], []

    async def cancel_after_three_steps(kind: str, data: dict, session) -> bool:
        if kind == "progress" and data.get("node") == sample_id:
            progress.append(data["value"])
            # ComfyUI 0.33 throttles progress messages (the first and the last are always
            # sent): press Cancel at the first one.
            if len(progress) == 1:
                await session.post(f"{comfy_server.url}/interrupt")
        if kind in FINISHED:
            outcome.append(kind)
        return kind in FINISHED

    comfy_server.follow_prompt(prompt, cancel_after_three_steps, timeout=300)
    assert outcome == ["execution_interrupted"]
    assert progress and max(progress) < 1000, f"Sample LoRA ran to the end despite Cancel: {progress}"
    # The server still works: the same workflow with normal settings succeeds afterwards.
    entry, _ = comfy_server.run_prompt(demo_assets.example_prompt("portrait_from_one_photo", object_info, TEST_IMAGE_SIZE))
    assert entry["status"]["status_str"] == "success"
