"""Bringing up ComfyUI's Python modules in a process that is not a ComfyUI server (the
`collect` command, Ray workers, benchmarks): find the ComfyUI folder, put it first on
sys.path and choose the device before anything imports `comfy.*`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ._hypernet import HypernetError

PACK_ROOT = Path(__file__).resolve().parent.parent


def find_comfyui(path: str | os.PathLike | None = None) -> Path:
    """The ComfyUI folder: `path`, else $COMFYUI_PATH, else the ComfyUI whose custom_nodes
    folder holds this pack."""
    candidates = []
    if path:
        candidates.append(("the given path", Path(path)))
    elif os.environ.get("COMFYUI_PATH"):
        candidates.append(("COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"])))
    elif PACK_ROOT.parent.name == "custom_nodes":
        candidates.append(("the ComfyUI this pack is installed in", PACK_ROOT.parent.parent))
    for what, folder in candidates:
        folder = folder.expanduser().resolve()
        if (folder / "comfy" / "model_management.py").is_file():
            return folder
        raise HypernetError(f"{what} {folder} is no ComfyUI folder (it has no comfy/model_management.py)")
    raise HypernetError("no ComfyUI found: set COMFYUI_PATH to your ComfyUI folder, or install this pack "
                        "into ComfyUI/custom_nodes")


def start_comfyui(path: str | os.PathLike | None = None, cpu: bool | None = None) -> Path:
    """Make `import comfy.sd` work here and return the ComfyUI folder.

    `cpu=None` runs on the CPU when torch sees no CUDA device, as `main.py --cpu` would; call
    it before the first `comfy.*` import (ComfyUI picks its device at import).
    """
    folder = find_comfyui(path)
    if "comfy.model_management" in sys.modules:
        loaded = Path(sys.modules["comfy.model_management"].__file__).resolve().parent.parent
        if loaded != folder:
            raise HypernetError(f"ComfyUI from {loaded} is already imported in this process; cannot switch to {folder}")
        return folder
    if str(folder) in sys.path:
        sys.path.remove(str(folder))
    sys.path.insert(0, str(folder))
    from comfy.cli_args import args
    if cpu is None:
        import torch
        cpu = not torch.cuda.is_available()
    if cpu:
        args.cpu = True
    import comfy.model_management  # noqa: F401  (device selection happens here)
    return folder
