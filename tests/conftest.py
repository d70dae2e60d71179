"""Shared fixtures: a real ComfyUI in-process and as a server, and small SDXL-shaped models."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

import comfy_support
from comfy_support import (REAL_SDXL_UNET, ComfyServer, build_sdxl_model, import_comfy, tiny_sd15_patcher,
                           tiny_sdxl_patcher)

# Before any test module imports hypernet or the pack: ComfyUI's `nodes` must shadow ours.
comfy_support.prepare_comfy()

# Fixtures that bring up ComfyUI's code (in-process or as a server). A test that uses one,
# directly or through another fixture, is marked `comfy`: `make test` runs those on every
# ComfyUI it tests (pytest -m comfy; scripts/test.sh names the modules left out on 0.3.75), and
# the rest (the pure hypernet library) once.
COMFY_FIXTURES = {"comfy", "comfy_server", "pack", "browser"}
# With pytest-xdist (`make test` runs two workers, --dist loadgroup): the tests on the session's
# ComfyUI server and its installed models share one worker, so the server starts and its hypernets
# train once; a module with module-scoped fixtures runs whole on one worker, so they are built once;
# every other test goes to whichever worker is free.
SERVER_FIXTURES = {"comfy_server", "installed"}


def _xdist_group(item) -> str | None:
    if SERVER_FIXTURES & set(item.fixturenames):
        return "comfy-server"
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    if any(d.scope in ("module", "class", "package") for defs in definitions.values() for d in defs):
        return item.nodeid.split("::")[0]
    return None


def pytest_itemcollected(item):  # at collection, before pytest-xdist's workers read the groups
    if COMFY_FIXTURES & set(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.comfy)
    group = _xdist_group(item) if hasattr(item, "fixturenames") else None
    if group:
        item.add_marker(pytest.mark.xdist_group(group))


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
    # `make test` trains them once for both ComfyUIs (scripts/test.sh sets this to a folder of its
    # own, removed at the end): they depend on this pack's code, not on the ComfyUI under test.
    shared = os.environ.get("LORA_HYPERNET_TEST_TRAINED")
    work = Path(shared) if shared else tmp_path_factory.mktemp("hypernet_training")
    found = {name: path for name, path in (("hypernet_ckpt", work / demo_assets.HYPERNET_FILE),
                                           ("sd15_ckpt", work / "sd15" / demo_assets.HYPERNET_SD15_FILE),
                                           ("face_global_ckpt", work / "face_global" / demo_assets.HYPERNET_FACE_GLOBAL_FILE))
             if path.is_file()}
    return demo_assets.install_models(comfy_server.base_dir, work=work, with_global=True, **found)


@pytest.fixture(scope="module")
def lora_nodes(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.lora_nodes")


@pytest.fixture
def loras_dir(comfy, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    return tmp_path
