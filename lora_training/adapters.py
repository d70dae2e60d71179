"""A layout's LoRA modules as ComfyUI training adapters on a MODEL clone, and back to kohya tensors.

ComfyUI's own LoRA training adapter (`comfy.weight_adapter.lora`, `LoRAAdapter.create_train`
for a fresh LoRA, `LoRAAdapter(...).to_train()` to continue one) is registered as a weight
wrapper on a clone of the MODEL, so model management applies it whenever the layer's weight is
used, exactly as its Train LoRA node does; only the layout's modules get one.
"""
from __future__ import annotations

import comfy.lora
import comfy.model_management
import comfy.utils
import torch
from comfy.weight_adapter.lora import LoRAAdapter

from ._hypernet import HypernetError, Layout, LoraWeights, ModuleWeights, layout_mismatches, lora_to_state_dict


def weight_keys(patcher, layout: Layout) -> dict[str, str]:
    """Kohya module name -> the MODEL's parameter key (`diffusion_model....weight`)."""
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    state = patcher.model.state_dict()
    problems = layout_mismatches(layout, {name: tuple(state[key].shape) for name, key in key_map.items() if key in state})
    if problems:
        raise HypernetError(f"the LoRA layout ({layout.base_model}, {len(layout)} modules) does not fit this MODEL: "
                            + "; ".join(problems) + ". Use a layout made for this base model.")
    return {m.name: key_map[m.name] for m in layout.modules}


def create_adapters(patcher, layout: Layout, seed: int, init: LoraWeights | None = None) -> dict[str, torch.nn.Module]:
    """One trainable adapter per layout module, registered on `patcher` (a clone: the caller's
    MODEL keeps no trace). Fresh factors are drawn on the CPU from `seed`, so the start is the
    same on every device; `init` continues a LoRA of this layout instead."""
    keys = weight_keys(patcher, layout)
    shapes = {name: comfy.utils.get_attr(patcher.model, key).shape for name, key in keys.items()}
    adapters = new_adapters(layout, shapes, seed, init, patcher.load_device)
    for name, adapter in adapters.items():
        patcher.add_weight_wrapper(keys[name], adapter)
    return adapters


def new_adapters(layout: Layout, shapes: dict[str, torch.Size], seed: int, init: LoraWeights | None,
                 device) -> dict[str, torch.nn.Module]:
    """The adapters create_adapters registers, unregistered: the one start of an identity's LoRA
    for its seed, whichever loop trains it."""
    if init is not None:
        _check_init(init, layout)
    adapters = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in layout.modules:
            if init is None:
                # create_train reads only the shape and device of the weight it is given
                adapter = LoRAAdapter.create_train(torch.zeros(()).expand(shapes[module.name]), rank=module.rank,
                                                   alpha=module.alpha)
            else:
                weights = init[module.name]
                factors = (weights.up_matrix().float().clone(), weights.down_matrix().float().clone(),
                           float(weights.alpha), None, None, None)
                adapter = LoRAAdapter(set(), factors).to_train()
            adapter = adapter.to(device=device, dtype=torch.float32).requires_grad_(True)
            adapter.alpha.requires_grad_(False)  # alpha is the layout's, not learned
            adapters[module.name] = adapter
    return adapters


def _as_autograd_tensor(weight: torch.Tensor) -> torch.Tensor:
    return weight.clone() if weight.is_inference() else weight


def let_gradients_through(patcher, skip: set[str]) -> None:
    """Weight wrappers that copy the layers' weights when they are inference tensors.

    ComfyUI loads checkpoints inside torch.inference_mode(), and autograd refuses to save such
    tensors for the backward pass, which needs every layer after the first LoRA. Its Train LoRA
    node gets around this by wrapping every weight in a trainable adapter; here only the layout's
    layers train, the others get this wrapper (a per-use copy, nothing when the weights are
    ordinary tensors, e.g. after model management moved them to the GPU).
    """
    for name, layer in patcher.model.named_modules():
        if not hasattr(layer, "weight_function"):
            continue
        for part in ("weight", "bias"):
            key = f"{name}.{part}"
            tensor = getattr(layer, part, None)
            if isinstance(tensor, torch.Tensor) and tensor.is_inference() and key not in skip:
                patcher.add_weight_wrapper(key, _as_autograd_tensor)


def _check_init(init: LoraWeights, layout: Layout) -> None:
    names = set(init)
    missing = [n for n in layout.names if n not in names]
    extra = sorted(names - set(layout.names))
    if missing or extra:
        raise HypernetError(f"the starting LoRA does not match the layout: {len(missing)} modules missing "
                            f"(e.g. {', '.join(missing[:3]) or '-'}), {len(extra)} not in it (e.g. {', '.join(extra[:3]) or '-'})")
    for module in layout.modules:
        given = init[module.name]
        if (given.out_features, given.in_features) != (module.out_features, module.in_features):
            raise HypernetError(f"the starting LoRA's module {module.name} is {given.out_features}x{given.in_features}, "
                                f"the layout's {module.out_features}x{module.in_features}")


def adapters_state_dict(adapters: dict[str, torch.nn.Module], layout: Layout) -> dict[str, torch.Tensor]:
    """The trained adapters as kohya tensors (float32, CPU): exactly what write_lora writes."""
    modules = {}
    for module in layout.modules:
        adapter = adapters[module.name]
        modules[module.name] = ModuleWeights(adapter.lora_up.weight.detach().float().cpu().clone(),
                                             adapter.lora_down.weight.detach().float().cpu().clone(),
                                             float(adapter.alpha))
    return lora_to_state_dict(LoraWeights(modules))


def remove_adapters(patcher, adapters: dict[str, torch.nn.Module]) -> None:
    """Take the adapters out of the layers and model management, so the MODEL the clone was
    made from computes with its own weights again.

    A fully loaded model keeps a clone's weight wrappers on its layers after unloading (ComfyUI
    only wipes them for low-VRAM loads), so they are also removed from the layers here.
    """
    loaded = comfy.model_management.current_loaded_models
    for index in reversed(range(len(loaded))):
        if loaded[index].model is patcher:
            loaded.pop(index).model_unload()
    ours = {id(a) for a in adapters.values()} | {id(_as_autograd_tensor)}
    for layer in patcher.model.modules():
        for attribute in ("weight_function", "bias_function"):
            functions = getattr(layer, attribute, None)
            if functions:
                setattr(layer, attribute, [f for f in functions if id(f) not in ours])
    for adapter in adapters.values():
        adapter.requires_grad_(False)
