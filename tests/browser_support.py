"""ComfyUI's real frontend in a real browser: Debian's chromium driven by Playwright's Python API
(no browser download; Playwright only brings its driver). Used by tests/test_browser.py and by
scripts/thumbnails.py (`make thumbnails`).

What a person would do, step by step: open the ComfyUI page, open the template browser, pick
this pack under its own name, click a workflow, press Run, and look at the result. Everything
waits on real conditions (an element, the server's history, a loaded image) with a bound.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from comfy_support import PACK_DIRNAME, ComfyServer

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
VIEWPORT = {"width": 2200, "height": 1100}  # wide enough that the graphs fit at a zoom that shows text

# Records every error toast, error overlay and dialog that appears once our workflow is loaded
# (toasts go away by themselves, so looking only at the end would miss them).
WATCH_ERRORS_JS = """
(() => {
  window.__lhSeen = [];
  const note = (kind, el) => {
    if (!window.__lhWatch) return;  // armed once our workflow is loaded (Frontend.open_template)
    if (!(el.offsetWidth || el.offsetHeight || el.getClientRects().length)) return;  // hidden
    const text = (el.innerText || '').trim().slice(0, 800);
    const key = kind + ':' + text;
    if (text && !window.__lhSeen.some(s => s.key === key)) window.__lhSeen.push({key, kind, text});
  };
  const scan = () => {
    document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn').forEach(e => note('toast', e));
    document.querySelectorAll('[data-testid=error-overlay]').forEach(e => note('error overlay', e));
    document.querySelectorAll('.p-dialog, [role=dialog], [role=alertdialog]').forEach(e => note('dialog', e));
  };
  window.__lhScan = scan;
  new MutationObserver(scan).observe(document, {subtree: true, childList: true, characterData: true,
                                                 attributes: true, attributeFilter: ['style', 'class']});
})();
"""

VISIBLE_ERRORS_JS = """
() => {
  const visible = e => !!(e.offsetWidth || e.offsetHeight || e.getClientRects().length);
  const out = [];
  document.querySelectorAll('.p-toast-message-error, .p-toast-message-warn').forEach(e => { if (visible(e)) out.push('toast: ' + e.innerText) });
  document.querySelectorAll('[data-testid=error-overlay]').forEach(e => { if (visible(e)) out.push('error overlay: ' + e.innerText) });
  document.querySelectorAll('.p-dialog, [role=dialog], [role=alertdialog]').forEach(e => { if (visible(e)) out.push('dialog: ' + e.innerText.slice(0, 800)) });
  return out;
}
"""

# The image a SaveImage node shows, loaded by the browser from the server (/api/view).
SAVED_IMAGE_SHOWN_JS = """
() => window.app.graph.nodes.filter(n => n.type === 'SaveImage').every(n =>
  n.imgs && n.imgs.length && n.imgs.every(i => i.complete && i.naturalWidth > 0))
"""

GRAPH_BOX_JS = """
() => {
  const ds = window.app.canvas.ds, r = window.app.canvas.canvas.getBoundingClientRect();
  let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
  for (const n of window.app.graph.nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 40);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const s = ds.scale, o = ds.offset;
  return {x: r.left + (x0 + o[0]) * s, y: r.top + (y0 + o[1]) * s, width: (x1 - x0) * s, height: (y1 - y0) * s};
}
"""


def chromium_available() -> bool:
    return Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)


@dataclass
class UiRun:
    """What one workflow run through the UI gave."""

    name: str
    prompt: dict | None = None  # the API prompt the frontend posted
    prompt_id: str | None = None
    refused: dict | None = None  # the server's answer when it refused the prompt
    history: dict | None = None
    image_shown: bool = False
    errors: list[str] = field(default_factory=list)  # toasts, overlays, dialogs seen
    screenshot: Path | None = None

    def problems(self) -> list[str]:
        found = list(self.errors)
        if self.refused is not None:
            found.append(f"the server refused the prompt: {json.dumps(self.refused)[:2000]}")
        status = (self.history or {}).get("status", {})
        if self.history is not None and status.get("status_str") != "success":
            messages = [m for m in status.get("messages", []) if m[0] == "execution_error"]
            found.append(f"the run ended with {status.get('status_str')!r}: {json.dumps(messages)[:2000]}")
        if self.history is not None and status.get("status_str") == "success" and not self.image_shown:
            found.append("the run succeeded but no output image appeared in the UI")
        return found


class Frontend:
    """One headless chromium for a ComfyUI server; a fresh browser context per workflow."""

    def __init__(self, server: ComfyServer, timeout_s: float = 120):
        from playwright.sync_api import sync_playwright
        self.server = server
        self.timeout_ms = timeout_s * 1000
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def open_page(self):
        # Every page is a new user's first visit: an empty graph and the template browser.
        # (A returning user gets ComfyUI's default graph, whose checkpoint is missing here.)
        self.server.post("/settings/Comfy.TutorialCompleted", False)
        context = self.browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(self.timeout_ms)
        page = context.new_page()
        page.add_init_script(WATCH_ERRORS_JS)
        page.goto(self.server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas")
        return page

    def open_template(self, page, name: str, pack: str = PACK_DIRNAME) -> None:
        """The template browser, the pack's own section in it, the workflow's card."""
        card = page.locator(f'[data-testid="template-workflow-{name}"]')
        pack_entry = page.get_by_text(pack, exact=True)
        # A new user's first visit opens the template browser by itself; otherwise the sidebar.
        try:
            pack_entry.first.wait_for(state="visible", timeout=5000)
        except Exception:
            page.get_by_role("button", name="Templates").first.click()
        pack_entry.first.click()
        card.first.click()
        # Loaded: every node of the file is in the graph and the browser has closed.
        expected = len(json.loads(self._workflow_text(pack, name))["nodes"])
        page.wait_for_function(f"() => window.app.graph.nodes.length === {expected}")
        card.first.wait_for(state="detached")
        page.evaluate("() => { window.__lhWatch = true; window.__lhScan(); }")

    def _workflow_text(self, pack: str, name: str) -> str:
        return Path(self.server.base_dir, "custom_nodes", pack, "example_workflows", f"{name}.json").read_text()

    def run_workflow(self, name: str, pack: str = PACK_DIRNAME, screenshot: Path | None = None,
                     latent_size: int | None = None, run_timeout_s: float = 600) -> UiRun:
        """Open `name` from the template browser, press Run, wait for the run to end and the
        image to be shown; what the frontend posted, what the server says, what the UI showed.
        `latent_size` sets Empty Latent Image's width and height first, as a user would type
        them in (tests run the tiny model at 256 px instead of the shipped 1024)."""
        run = UiRun(name)
        page = self.open_page()
        try:
            self.open_template(page, name, pack)
            if latent_size:
                set_latent_size(page, latent_size)
            with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as posted:
                page.locator('[data-testid="queue-button"]').first.click()
            response = posted.value
            run.prompt = (response.request.post_data_json or {}).get("prompt")
            answer = response.json()
            if response.status != 200 or "prompt_id" not in answer:
                run.refused = answer
            else:
                run.prompt_id = answer["prompt_id"]
                run.history = self.server.wait_history(run.prompt_id, timeout=run_timeout_s)
                if run.history["status"].get("status_str") == "success":
                    try:
                        page.wait_for_function(SAVED_IMAGE_SHOWN_JS, timeout=60_000)
                        run.image_shown = True
                    except Exception:
                        run.image_shown = False
            # The UI reacts to the end of the run over its websocket: give an error toast or
            # overlay the chance to appear (bounded), then read what was seen.
            try:
                page.wait_for_function("() => (window.__lhSeen || []).length > 0", timeout=2000)
            except Exception:
                pass
            seen = page.evaluate("() => (window.__lhSeen || []).map(s => s.kind + ': ' + s.text)")
            visible = page.evaluate(VISIBLE_ERRORS_JS)
            run.errors = list(dict.fromkeys(seen + visible))
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
                run.screenshot = screenshot
        finally:
            page.context.close()
        return run

    def graph_screenshot(self, name: str, path: Path, pack: str = PACK_DIRNAME, run: bool = True,
                         run_timeout_s: float = 600) -> UiRun:
        """For thumbnails: the workflow as the frontend draws it (after a run, with its
        result), clipped to the graph, minimap hidden."""
        result = UiRun(name)
        page = self.open_page()
        try:
            self.open_template(page, name, pack)
            hide_minimap = page.get_by_role("button", name="Hide Minimap")
            if hide_minimap.count():
                hide_minimap.first.click()
            if run:
                with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as posted:
                    page.locator('[data-testid="queue-button"]').first.click()
                answer = posted.value.json()
                result.prompt_id = answer.get("prompt_id")
                if result.prompt_id is None:
                    raise RuntimeError(f"the server refused {name}: {answer}")
                result.history = self.server.wait_history(result.prompt_id, timeout=run_timeout_s)
                page.wait_for_function(SAVED_IMAGE_SHOWN_JS, timeout=60_000)
                # Toasts ("Job completed") would cover the graph's corner: close them.
                for close in page.locator(".p-toast-close-button").all():
                    if close.is_visible():
                        close.click()
                page.locator(".p-toast-message").first.wait_for(state="detached", timeout=10_000)
            box = page.evaluate(GRAPH_BOX_JS)
            pad = 16
            clip = {"x": max(box["x"] - pad, 0), "y": max(box["y"] - pad, 0),
                    "width": min(box["width"] + 2 * pad, VIEWPORT["width"]),
                    "height": min(box["height"] + 2 * pad, VIEWPORT["height"])}
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), clip=clip)
            result.screenshot = path
        finally:
            page.context.close()
        return result


def set_latent_size(page, size: int) -> None:
    """Width and height of every Empty Latent Image, through the nodes' own widgets. A workflow
    without one (the typeface example: Glyph Prompt makes its latents) is left as it is; one
    whose Empty Latent Image shows no such widgets fails, since the size would silently stay."""
    nodes, changed = page.evaluate("""(size) => {
      let changed = 0;
      const latents = window.app.graph.nodes.filter(n => n.type === 'EmptyLatentImage');
      for (const n of latents)
        for (const w of n.widgets.filter(w => w.name === 'width' || w.name === 'height')) {
          w.value = size; if (w.callback) w.callback(size, window.app.canvas, n); changed++;
        }
      // Refine LoRA trains at its own resolution: the same size keeps the run short
      for (const n of window.app.graph.nodes.filter(n => n.type === 'LoraHypernetRefineLoRA'))
        for (const w of n.widgets.filter(w => w.name === 'resolution')) {
          w.value = size; if (w.callback) w.callback(size, window.app.canvas, n);
        }
      window.app.graph.setDirtyCanvas(true, true);
      return [latents.length, changed];
    }""", size)
    if nodes and changed < 2 * nodes:
        raise AssertionError("an Empty Latent Image in this workflow shows no width/height widgets")


def prompt_differences(posted: dict, expected: dict) -> list[str]:
    """Where the prompt the frontend built differs from ours (node ids, class types, inputs);
    numbers compare by value (JSON has no 3.0)."""
    out = []
    for node_id in sorted(set(posted) | set(expected), key=lambda k: (len(k), k)):
        a, b = posted.get(node_id), expected.get(node_id)
        if a is None or b is None:
            out.append(f"node {node_id}: only in the {'expected' if a is None else 'posted'} prompt")
            continue
        if a["class_type"] != b["class_type"]:
            out.append(f"node {node_id}: class {a['class_type']} != {b['class_type']}")
        for key in sorted(set(a["inputs"]) | set(b["inputs"])):
            va, vb = a["inputs"].get(key, "<absent>"), b["inputs"].get(key, "<absent>")
            if va != vb:
                out.append(f"node {node_id} ({a['class_type']}).{key}: frontend {va!r}, ours {vb!r}")
    return out
