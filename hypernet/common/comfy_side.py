"""The pack's ComfyUI-side packages (lora_training, image_eval), imported by name at run time so
that the library itself never imports ComfyUI."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from ..errors import HypernetError

PACK_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `hypernet` and those packages


def import_comfy_side(name: str, what: str, command: str):
    """Import package `name` from the pack's folder and start ComfyUI through its start_comfyui(),
    or raise a one-line HypernetError saying how to run `command`."""
    if str(PACK_ROOT) not in sys.path:
        sys.path.insert(0, str(PACK_ROOT))
    try:
        package = importlib.import_module(name)
    except ImportError as exc:
        raise HypernetError(f"{what} {name!r} cannot be imported ({exc}); run {command} from the pack's folder "
                            "with ComfyUI installed (COMFYUI_PATH)") from exc
    package.start_comfyui()  # ComfyUI on sys.path and set up, before anything imports comfy.*
    return package
