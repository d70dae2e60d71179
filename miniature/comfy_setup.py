"""Importing ComfyUI from a command-line tool: its folder first on sys.path, CPU unless asked."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_COMFYUI = REPO / ".comfyui" / "ComfyUI"


def import_comfy(comfyui_path: str | None = None, cpu: bool = True) -> None:
    """Make `import comfy...` work outside a running ComfyUI (COMFYUI_PATH, else the tree
    `make` sets up). Call before importing miniature.comfy_glyph."""
    root = Path(comfyui_path or os.environ.get("COMFYUI_PATH") or DEFAULT_COMFYUI)
    root = (REPO / root).resolve() if not root.is_absolute() else root
    if not (root / "main.py").is_file():
        raise SystemExit(f"no ComfyUI at {root}: set COMFYUI_PATH or pass --comfyui (run `make test` once to set one up)")
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    from comfy.cli_args import args
    args.cpu = args.cpu or cpu
