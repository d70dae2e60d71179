"""The shipped example workflows in ComfyUI's real frontend, in a real browser (Debian's
chromium through Playwright; tests/browser_support.py).

For each workflow, as a person would: open it from the template browser (under this pack's
name), press Run, wait for the run to end, and see the output image in the UI with no error
toast, overlay or dialog. The prompt the frontend itself built from the workflow must carry the
same nodes, links and widget values as tests/workflow_api.py's conversion (which the other
tests use). Screenshots land in test_artifacts/browser/<ComfyUI version>/.

The workflows run as shipped: only the files they name are stand-ins (a marked checkpoint file
that the test pack loads as the tiny SDXL-architecture model, generated face models, tiny
hypernets). A deliberately broken copy must fail the same check.
"""
import json
import os

import pytest

import browser_support
import demo_assets
from comfy_support import REPO, ComfyServer, comfyui_version
from workflow_api import workflow_to_prompt

EXTRA_PACK = "lora_hypernet_test_examples"
BROKEN = "broken_portrait_without_global_features"
# portrait_from_one_photo as saved before the V3 port, with the old type names (LORA,
# HYPERNET, FACE_EMBEDDING, ...) in its sockets and links: node ids kept, so it must still run.
LEGACY = "saved_before_v3"
LEGACY_FILE = REPO / "tests" / "data" / "workflow_saved_before_v3.json"
TEST_IMAGE_SIZE = 256  # set in the UI before Run: the shipped 1024 px take minutes on the tiny model
ARTIFACTS = REPO / "test_artifacts" / "browser" / f"comfyui-{comfyui_version()}"


def write_extra_pack(custom_nodes) -> None:
    """A second pack whose templates are a broken copy of a shipped workflow (Load Hypernet
    names the face+global hypernet, but nothing feeds Sample LoRA's global_features, so Sample
    LoRA stops with an error at run time; validation passes, the file exists) and a workflow
    saved before the V3 port."""
    workflow = json.loads((demo_assets.WORKFLOWS / "portrait_from_one_photo.json").read_text())
    loader = next(n for n in workflow["nodes"] if n["type"] == "LoraHypernetLoad")
    loader["widgets_values"] = [demo_assets.HYPERNET_FACE_GLOBAL_FILE]
    folder = custom_nodes / EXTRA_PACK
    (folder / "example_workflows").mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    (folder / "example_workflows" / f"{BROKEN}.json").write_text(json.dumps(workflow, indent=1))
    (folder / "example_workflows" / f"{LEGACY}.json").write_text(LEGACY_FILE.read_text())


@pytest.fixture(scope="module")
def browser(installed, tmp_path_factory):
    """A ComfyUI server of its own (a new user's first visit; a pack of extra test templates beside
    ours) with the example workflows' files, and a headless chromium on it."""
    if not browser_support.chromium_available():
        if os.environ.get("CI"):
            pytest.fail(f"no chromium at {browser_support.CHROMIUM}: scripts/setup.sh installs Debian's package")
        pytest.skip(f"no chromium at {browser_support.CHROMIUM} (apt-get install chromium)")
    base = tmp_path_factory.mktemp("browser_base")
    server = ComfyServer(base, fixture_nodes=True)
    demo_assets.install_models(base, hypernet_ckpt=installed["hypernet"], face_global_ckpt=installed["hypernet_face_global"],
                               with_global=True, sd15_ckpt=installed["hypernet_sd15"])
    demo_assets.install_tiny_checkpoint(base)
    write_extra_pack(base / "custom_nodes")
    server.start()
    try:
        with browser_support.Frontend(server) as frontend:
            yield frontend
    finally:
        server.stop()


@pytest.fixture(scope="module")
def object_info(browser):
    return browser.server.get("/object_info")


def test_the_template_browser_lists_the_pack_with_every_example(browser):
    templates = browser.server.get("/api/workflow_templates")
    assert sorted(templates[browser_support.PACK_DIRNAME]) == demo_assets.example_workflow_names()


@pytest.mark.parametrize("name", demo_assets.example_workflow_names())
def test_example_workflow_runs_from_the_template_browser(browser, object_info, name):
    shot = ARTIFACTS / f"{name}.png"
    run = browser.run_workflow(name, screenshot=shot, latent_size=TEST_IMAGE_SIZE)
    assert not run.problems(), "\n".join(run.problems()) + f"\n(screenshot: {shot})"
    assert run.image_shown
    # The frontend's own load -> API conversion keeps every node, link and widget value
    # (besides the image size typed in above).
    workflow = json.loads((demo_assets.WORKFLOWS / f"{name}.json").read_text())
    expected = workflow_to_prompt(workflow, object_info)
    for node in expected.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=TEST_IMAGE_SIZE, height=TEST_IMAGE_SIZE)
        if node["class_type"] == "LoraHypernetRefineLoRA":
            node["inputs"].update(resolution=TEST_IMAGE_SIZE)
    differences = browser_support.prompt_differences(run.prompt, expected)
    assert not differences, "\n".join(differences)


def test_a_broken_workflow_fails_the_same_check(browser):
    shot = ARTIFACTS / f"{BROKEN}.png"
    run = browser.run_workflow(BROKEN, pack=EXTRA_PACK, screenshot=shot, latent_size=TEST_IMAGE_SIZE)
    problems = "\n".join(run.problems())
    print(f"what the check reported for the broken copy (screenshot {shot}):\n{problems}")
    assert run.problems(), "the broken workflow passed the browser check"
    assert not run.image_shown
    # The UI showed it (not only the server's history) and named the cause.
    assert run.errors, "no error toast, overlay or dialog appeared in the UI"
    assert "global_features" in problems


def test_a_workflow_saved_before_the_v3_port_still_loads_and_runs(browser):
    run = browser.run_workflow(LEGACY, pack=EXTRA_PACK, screenshot=ARTIFACTS / f"{LEGACY}.png",
                               latent_size=TEST_IMAGE_SIZE)
    assert not run.problems(), "\n".join(run.problems())
    assert run.image_shown
    kinds = {node["class_type"] for node in run.prompt.values()}
    assert {"LoraHypernetSample", "LoraHypernetDecode", "LoraHypernetApplyLoRA"} <= kinds
