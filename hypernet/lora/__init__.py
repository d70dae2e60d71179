"""LoRA data: what a LoRA is, on disk and as the flat vectors the hypernetwork learns on.

- layout: LoraModule and Layout, the ordered modules a LoRA touches, and attention_layout.
- presets: SDXL and SD1.5 UNet specs and the named layouts (`--layout sdxl-attn-r4`, `sd15-w2w`).
- weights: ModuleWeights and LoraWeights, the in-memory LoRA every format is read into.
- keys: kohya, diffusers and PEFT key names mapped to kohya ldm module names.
- lora_io: reading LoRA files (refusing implausible ones) and writing kohya files.
- canonical: canonical SVD factors: one (up, down) pair per weight update.
- alignment: reference-aligned factors, the smooth representation the autoencoder learns on.
- vectorize: LoRA <-> flat vector in a layout's order.
- w2w: weights2weights' PEFT rows <-> kohya LoRAs of the sd15-w2w layout, bit for bit.
"""
