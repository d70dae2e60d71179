"""LoRA key names in the formats ComfyUI accepts for SDXL and SD1.5 UNets, mapped to kohya ldm names.

See lora_io's docstring for the accepted formats. Diffusers block names map to ldm names for
UNets with two res blocks per level (SDXL, SD1.5; test_layout_sd15 checks SD1.5 against ComfyUI's map);
only the attention blocks (`attentions`) map.
"""
from __future__ import annotations

import re

from .layout import UNET_PREFIX

TEXT_ENCODER_PREFIXES = ("lora_te1_", "lora_te2_", "lora_te_")
_LDM_UNET_ROOTS = ("input_blocks_", "middle_block_", "output_blocks_", "time_embed_", "label_emb_", "out_")

# (key suffix, role); the part of the key before the suffix names the module.
_SUFFIXES = (
    (".lora_up.weight", "up"), (".lora_down.weight", "down"),
    ("_lora.up.weight", "up"), ("_lora.down.weight", "down"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora_B.default.weight", "up"), (".lora_A.default.weight", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    (".alpha", "alpha"),
)
_DIFFUSERS_BLOCK = (
    (re.compile(r"^down_blocks[._](\d+)[._]attentions[._](\d+)[._](.+)$"), lambda i, j: f"input_blocks.{3 * i + j + 1}.1"),
    (re.compile(r"^mid_block[._]attentions[._]0[._](.+)$"), lambda: "middle_block.1"),
    (re.compile(r"^up_blocks[._](\d+)[._]attentions[._](\d+)[._](.+)$"), lambda i, j: f"output_blocks.{3 * i + j}.1"),
)
_TRANSFORMER_SUBPATH = re.compile(
    r"^(transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.0\.proj|ff\.net\.2)|proj_in|proj_out)$")
_DIFFUSERS_STYLE_KOHYA = ("down_blocks_", "mid_block_", "up_blocks_")
_TEXT_ENCODER_ROOTS = (("text_encoder.text_model.", "lora_te1_text_model_"),
                       ("text_encoder_2.text_model.", "lora_te2_text_model_"))


def _diffusers_to_ldm(path: str) -> str | None:
    """`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> ldm dotted path, or None.

    Accepts dots or underscores as separators (kohya's diffusers naming uses underscores).
    """
    for pattern, block in _DIFFUSERS_BLOCK:
        match = pattern.match(path)
        if match:
            *indices, rest = match.groups()
            rest = _underscores_to_dots(rest) if "." not in rest else rest
            if rest is None or not _TRANSFORMER_SUBPATH.match(rest):
                return None
            return f"{block(*map(int, indices))}.{rest}"
    return None


_SUBPATH_WORDS = ("transformer_blocks", "proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out", "attn1", "attn2", "ff", "net", "proj")


def _underscores_to_dots(rest: str) -> str | None:
    """Kohya flattened `transformer_blocks_0_attn1_to_out_0` back to dots, knowing the sub-path words."""
    out, pos = [], 0
    while pos < len(rest):
        for word in _SUBPATH_WORDS:
            if rest.startswith(word, pos) and (pos + len(word) == len(rest) or rest[pos + len(word)] == "_"):
                out.append(word)
                pos += len(word) + 1
                break
        else:
            number = re.match(r"\d+(?=_|$)", rest[pos:])
            if not number:
                return None
            out.append(number.group())
            pos += len(number.group()) + 1
    return ".".join(out)


def kohya_name(prefix: str) -> str | None:
    """The kohya ldm module name for a key prefix in any accepted format, or None if unknown."""
    if prefix.startswith(TEXT_ENCODER_PREFIXES):
        return prefix
    if prefix.startswith(UNET_PREFIX):
        rest = prefix[len(UNET_PREFIX):]
        if rest.startswith(_DIFFUSERS_STYLE_KOHYA):
            ldm = _diffusers_to_ldm(rest)
            return None if ldm is None else UNET_PREFIX + ldm.replace(".", "_")
        return prefix if rest.startswith(_LDM_UNET_ROOTS) else None
    path = prefix.removeprefix("base_model.model.")
    for diffusers_root, kohya_root in _TEXT_ENCODER_ROOTS:
        if path.startswith(diffusers_root):
            return kohya_root + path[len(diffusers_root):].replace(".", "_")
    path = path.removeprefix("unet.")
    if ".processor." in path:
        path = path.replace(".processor.to_out", ".to_out.0").replace(".processor.", ".")
    ldm = _diffusers_to_ldm(path)
    return None if ldm is None else UNET_PREFIX + ldm.replace(".", "_")


def split_key(key: str) -> tuple[str, str] | None:
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None
