"""Diffusion hypernetwork over LoRA weights: a pure PyTorch library (no ComfyUI import).

Submodules are imported where used so that `import hypernet` stays cheap for the node pack.
"""
__version__ = "0.1.0"
GENERATOR = f"comfyui-lora-hypernet {__version__}"
