"""`make thumbnails`: each example workflow's .jpg thumbnail is a screenshot of that workflow in
ComfyUI's real frontend, after a run, taken by the browser test's harness
(tests/browser_support.py): opened from the template browser, run, and clipped to the graph.
So the thumbnails show the workflows as they are and cannot drift from them.

The run uses the same stand-ins as the tests and `make demo` (the tiny SDXL-architecture
model behind the workflow's checkpoint name, generated face models, tiny hypernets trained
here in about a minute), so the portrait in the picture is the tiny model's noise.

Usage: python scripts/thumbnails.py [WORKFLOW_NAME ...] (default: every example workflow)
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import comfy_support  # noqa: E402

comfy_support.prepare_comfy()  # the test helpers below import comfy / hypernet
sys.path.append(str(REPO))
import browser_support  # noqa: E402
import demo_assets  # noqa: E402
from PIL import Image  # noqa: E402

WIDTH = 960  # what the template browser's cards show, with room for high-DPI screens


def main(argv: list[str]) -> int:
    names = argv or demo_assets.example_workflow_names()
    unknown = set(names) - set(demo_assets.example_workflow_names())
    if unknown:
        print(f"no such example workflow: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if not browser_support.chromium_available():
        print(f"no chromium at {browser_support.CHROMIUM}: apt-get install chromium", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "comfy_base"
        server = comfy_support.ComfyServer(base, fixture_nodes=True)
        print("training the tiny hypernets on synthetic collections ...", flush=True)
        demo_assets.install_models(base, work=tmp / "training", with_global=True)
        demo_assets.install_tiny_checkpoint(base)
        print(f"ComfyUI {comfy_support.comfyui_version()} at {comfy_support.COMFYUI_PATH}", flush=True)
        with server, browser_support.Frontend(server) as frontend:
            for name in names:
                shot = frontend.graph_screenshot(name, tmp / f"{name}.png").screenshot
                image = Image.open(shot).convert("RGB")
                image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
                target = demo_assets.WORKFLOWS / f"{name}.jpg"
                image.save(target, quality=88)
                print(f"wrote {target.relative_to(REPO)} ({image.width}x{image.height})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
