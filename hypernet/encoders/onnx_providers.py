"""onnxruntime execution providers: short names, what this installation offers, and the
clashing-distributions trap (several onnxruntime wheels overwrite each other's module)."""
from __future__ import annotations

import logging
from importlib import metadata
from typing import Sequence

from ..errors import HypernetError

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
PROVIDER_ALIASES = {
    "cpu": CPU_PROVIDER,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
# Distributions that all install the same `onnxruntime` module.
_RUNTIME_DISTRIBUTIONS = {
    "onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
    "onnxruntime-rocm", "onnxruntime-migraphx", "onnxruntime-silicon", "onnxruntime-qnn",
}
_runtime_conflict_checked = False


def provider_name(name: str) -> str:
    """onnxruntime's name for a short provider name ("CUDA" -> "CUDAExecutionProvider")."""
    if name.endswith("ExecutionProvider"):
        return name
    try:
        return PROVIDER_ALIASES[name.lower()]
    except KeyError:
        raise HypernetError(
            f"Unknown onnxruntime provider {name!r}; use one of "
            f"{', '.join(sorted(set(PROVIDER_ALIASES)))} or a full name such as "
            "'CUDAExecutionProvider'.") from None


def resolve_providers(names: Sequence[str]) -> list[str]:
    """Requested providers that this onnxruntime offers, in order, always ending with CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    chosen: list[str] = []
    for full_name in map(provider_name, names):
        if full_name not in available:
            logger.warning(
                "onnxruntime provider %s is not available in this installation (available: %s); "
                "the face models run on CPU.", full_name, ", ".join(available))
        elif full_name not in chosen:
            chosen.append(full_name)
    if CPU_PROVIDER not in chosen:
        chosen.append(CPU_PROVIDER)
    return chosen


def installed_onnxruntime_distributions() -> list[str]:
    """Installed distributions that provide the `onnxruntime` module (normally exactly one)."""
    names = set()
    for distribution in metadata.distributions():
        name = (distribution.metadata["Name"] or "").lower().replace("_", "-")
        if name in _RUNTIME_DISTRIBUTIONS:
            names.add(name)
    return sorted(names)


def warn_about_runtime_conflict() -> None:
    global _runtime_conflict_checked
    if _runtime_conflict_checked:
        return
    _runtime_conflict_checked = True
    found = installed_onnxruntime_distributions()
    if len(found) > 1:
        logger.warning(
            "Several onnxruntime distributions are installed (%s). They overwrite each other's "
            "'onnxruntime' module, so GPU providers can silently disappear. Keep exactly one: "
            "pip uninstall %s, then pip install the one you want (onnxruntime-gpu for NVIDIA "
            "GPUs, onnxruntime otherwise).", ", ".join(found), " ".join(found))
