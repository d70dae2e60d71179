"""The parts of the `hypernet` library this package uses, however this package was imported.

Inside ComfyUI the pack is one package (`<pack>.lora_training`, `<pack>.hypernet`); from the
command line and in Ray workers the repository root is on sys.path and both are top-level.
"""
try:
    from ..hypernet.collect.jobs import LR_SCHEDULES
    from ..hypernet.errors import HypernetError
    from ..hypernet.lora.layout import Layout, layout_mismatches
    from ..hypernet.lora.lora_io import lora_from_state_dict, lora_to_state_dict
    from ..hypernet.lora.weights import LoraWeights, ModuleWeights
except ImportError:  # imported as a top-level package
    from hypernet.collect.jobs import LR_SCHEDULES
    from hypernet.errors import HypernetError
    from hypernet.lora.layout import Layout, layout_mismatches
    from hypernet.lora.lora_io import lora_from_state_dict, lora_to_state_dict
    from hypernet.lora.weights import LoraWeights, ModuleWeights

__all__ = ["LR_SCHEDULES", "HypernetError", "Layout", "layout_mismatches", "LoraWeights", "ModuleWeights", "lora_from_state_dict", "lora_to_state_dict"]
