"""Shared fixtures: a real ComfyUI in-process and as a server, and small SDXL-shaped models."""
from __future__ import annotations

import importlib

import pytest

import comfy_support
from comfy_support import (REAL_SDXL_UNET, ComfyServer, build_sdxl_model, import_comfy, tiny_sd15_patcher,
                           tiny_sdxl_patcher)

# Before any test module imports hypernet or the pack: ComfyUI's `nodes` must shadow ours.
comfy_support.prepare_comfy()

# Fixtures that bring up ComfyUI's code (in-process or as a server). A test that uses one,
# directly or through another fixture, is marked `comfy`: `make test` runs those on every
# ComfyUI it tests (pytest -m comfy), and the rest (the pure hypernet library) once.
COMFY_FIXTURES = {"comfy", "comfy_server", "pack", "browser"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if COMFY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.comfy)


def pytest_report_header(config):
    return f"ComfyUI {comfy_support.comfyui_version()} at {comfy_support.COMFYUI_PATH}"


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's `comfy` package, imported in-process with --cpu."""
    return import_comfy()


@pytest.fixture(scope="session")
def tiny_sdxl_base(comfy):
    """One tiny SDXL-architecture ModelPatcher for the session; tests use `tiny_sdxl`."""
    return tiny_sdxl_patcher(seed=0)


@pytest.fixture
def tiny_sdxl(comfy, tiny_sdxl_base):
    """A clone of the tiny SDXL MODEL: patches added here never reach other tests."""
    clone = tiny_sdxl_base.clone()
    yield clone
    comfy.model_management.unload_all_models()
    clone.unpatch_model()


@pytest.fixture(scope="session")
def tiny_sd15_base(comfy):
    """One tiny SD1.5-architecture ModelPatcher for the session; tests use `tiny_sd15`."""
    return tiny_sd15_patcher(seed=0)


@pytest.fixture
def tiny_sd15(comfy, tiny_sd15_base):
    """A clone of the tiny SD1.5 MODEL: patches added here never reach other tests."""
    clone = tiny_sd15_base.clone()
    yield clone
    comfy.model_management.unload_all_models()
    clone.unpatch_model()


@pytest.fixture(scope="session")
def sdxl_meta(comfy):
    """ComfyUI's real SDXL BaseModel (2.57 B parameters) on the meta device: names and shapes, no memory."""
    return build_sdxl_model(REAL_SDXL_UNET, device="meta")


@pytest.fixture(scope="session")
def pack(comfy):
    """This pack imported the way ComfyUI imports a custom node folder."""
    return comfy_support.import_pack()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A ComfyUI server with this pack, on a free port, shut down at the end of the session."""
    server = ComfyServer(tmp_path_factory.mktemp("comfy_base"), fixture_nodes=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def installed(comfy_server, tmp_path_factory):
    """The example workflows' models in the server's folders: generated face models, the tiny
    CLIP vision file and two tiny hypernets trained here on synthetic collections."""
    import demo_assets
    return demo_assets.install_models(comfy_server.base_dir, work=tmp_path_factory.mktemp("hypernet_training"),
                                      with_global=True)


@pytest.fixture(scope="module")
def lora_nodes(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.lora_nodes")


@pytest.fixture
def loras_dir(comfy, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path
