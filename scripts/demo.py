"""`make demo`: start a headless ComfyUI with this pack, show what it registered, stop.

Uses the same server harness as the tests (tests/comfy_support.py), in a throwaway base
directory under demo_out/, so your own ComfyUI folders are never touched.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from comfy_support import PACK_DIRNAME, ComfyServer  # noqa: E402


def main() -> int:
    base = REPO / "demo_out" / "comfy_base"
    shutil.rmtree(base, ignore_errors=True)
    started = time.monotonic()
    with ComfyServer(base) as server:
        boot = time.monotonic() - started
        info = server.get("/object_info")
        ours = {k: v for k, v in info.items() if v.get("python_module", "").endswith(PACK_DIRNAME)}
        print(f"ComfyUI answered on {server.url} after {boot:.1f} s with {len(info)} nodes, {len(ours)} from this pack:")
        for key, node in sorted(ours.items()):
            inputs = ", ".join(node["input"].get("required", {}))
            outputs = ", ".join(node["output"])
            print(f"  {node['display_name']:<28} [{node['category']}]  ({inputs}) -> ({outputs})")
        if not ours:
            print(server.log()[-3000:])
            return 1
    print(f"server stopped; log in {server.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
