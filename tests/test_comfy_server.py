"""The pack loads in a real ComfyUI server and registers its nodes."""
import re

from comfy_support import PACK_DIRNAME


def test_server_imports_pack_without_failure(comfy_server):
    log = comfy_server.log()
    assert re.search(rf"seconds: .*custom_nodes[/\\]{re.escape(PACK_DIRNAME)}\s*$", log, re.MULTILINE), log[-3000:]
    assert "IMPORT FAILED" not in "".join(line for line in log.splitlines() if PACK_DIRNAME in line), log[-3000:]
    assert f"Cannot import {comfy_server.base_dir}" not in log


# Saved workflows name nodes by these ids: they never change.
NODE_IDS = {"LoraHypernetLoadFaceAnalyzer", "LoraHypernetFaceEmbed", "LoraHypernetMixIdentities",
            "LoraHypernetEncodeGlobalFeatures", "LoraHypernetLoad", "LoraHypernetSample", "LoraHypernetDecode",
            "LoraHypernetApplyLoRA", "LoraHypernetSaveLoRA", "LoraHypernetLoadGlyphModel", "LoraHypernetGlyphPrompt",
            "LoraHypernetRefineLoRA", "LoraHypernetGlyphSheet"}
# ComfyUI's own socket types that our nodes use; every other type must carry our prefix.
CORE_TYPES = {"IMAGE", "MODEL", "CLIP", "CLIP_VISION", "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO",
              "VAE", "CONDITIONING", "LATENT"}


def test_object_info_lists_every_pack_node(comfy_server, pack):
    info = comfy_server.get("/object_info")
    ours = pack.nodes.node_ids()
    assert set(ours) == NODE_IDS
    for key, cls in ours.items():
        assert key in info, f"{key} missing from /object_info"
        assert info[key]["display_name"] == cls.GET_SCHEMA().display_name
        assert info[key]["display_name"].startswith("LoRA Hypernet: ")
        assert info[key]["category"].startswith("LoRA Hypernet/")
        assert info[key]["python_module"].startswith("custom_nodes.")


def test_every_custom_socket_type_carries_the_pack_prefix(comfy_server, pack):
    info = comfy_server.get("/object_info")
    for key in pack.nodes.node_ids():
        specs = {**info[key]["input"]["required"], **info[key]["input"].get("optional", {})}
        types = [s[0] for s in specs.values() if isinstance(s[0], str)] + list(info[key]["output"])
        for kind in types:
            assert kind in CORE_TYPES or kind.startswith("LORA_HYPERNET_"), f"{key} uses the unprefixed type {kind}"
        for kind in types:
            # No other node of this complete ComfyUI (or the test pack) produces our types.
            if kind.startswith("LORA_HYPERNET_"):
                makers = {k for k, v in info.items() if kind in v["output"]}
                assert makers <= set(ours_ids := pack.nodes.node_ids()), (kind, makers - set(ours_ids))
    # ComfyUI's own nodes are there too: the server is a real, complete ComfyUI.
    assert {"KSampler", "CheckpointLoaderSimple", "LoraLoader", "SaveImage"} <= info.keys()


def test_tooltips_and_descriptions_reach_the_frontend(comfy_server, pack):
    info = comfy_server.get("/object_info")
    for key in pack.nodes.node_ids():
        node = info[key]
        assert node["description"], f"{key} has no description"
        specs = {**node["input"]["required"], **node["input"].get("optional", {})}
        for name, spec in specs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{key}.{name} has no tooltip"
        assert all(node["output_tooltips"]), f"{key} has an output without a tooltip"
    assert info["LoraHypernetSaveLoRA"]["output_node"] is True
    assert info["LoraHypernetSample"]["input"]["required"]["seed"][1]["control_after_generate"] is True
