"""ComfyUI entry point of the LoRA hypernet pack (V3 schema): registration only, nothing heavy at import."""
from .nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
