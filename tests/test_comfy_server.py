"""The pack loads in a real ComfyUI server and registers its nodes."""
import re

from comfy_support import PACK_DIRNAME


def test_server_imports_pack_without_failure(comfy_server):
    log = comfy_server.log()
    assert re.search(rf"seconds: .*custom_nodes[/\\]{re.escape(PACK_DIRNAME)}\s*$", log, re.MULTILINE), log[-3000:]
    assert "IMPORT FAILED" not in "".join(line for line in log.splitlines() if PACK_DIRNAME in line), log[-3000:]
    assert f"Cannot import {comfy_server.base_dir}" not in log


def test_object_info_lists_every_pack_node(comfy_server, pack):
    info = comfy_server.get("/object_info")
    assert pack.NODE_CLASS_MAPPINGS, "the pack registers no nodes"
    for key in pack.NODE_CLASS_MAPPINGS:
        assert key in info, f"{key} missing from /object_info"
        assert info[key]["display_name"] == pack.NODE_DISPLAY_NAME_MAPPINGS[key]
        assert info[key]["category"].startswith("LoRA Synthesis")
    # ComfyUI's own nodes are there too: the server is a real, complete ComfyUI.
    assert {"KSampler", "CheckpointLoaderSimple", "LoraLoader", "SaveImage"} <= info.keys()
