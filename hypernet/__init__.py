"""Diffusion hypernetwork over LoRA weights: a pure PyTorch library (no ComfyUI import).

The data path, and the package that owns each stage:

    identity folders (LoRA + photos) --data.builder--> dataset (canonical LoRA vectors + embeddings)
    dataset --pipeline.training--> hypernet checkpoint (weight autoencoder + conditional prior)
    photo --encoders.face--> embedding --pipeline.sampling--> latent --> LoRA (kohya) --> the MODEL (nodes/)

- `common/`: what every layer uses: atomic files and digests, seeded generators, unit vectors, images.
- `lora/`: LoRA data: layouts and presets, LoRA files in and out, canonical factors, alignment, vectors.
- `encoders/`: the condition's encoders: ArcFace faces (insightface, onnxruntime), CLIP global features.
- `model/`: the networks: weight autoencoder, diffusion schedule, denoisers, condition fusion, the
  Hypernet that holds them, and its checkpoint file.
- `data/`: the training dataset format, the builder from identity folders, synthetic collections.
- `pipeline/`: training, sampling and evaluation as library functions.
- `collect/`: building a collection by training one LoRA per identity (locally or on Ray); the
  trainer itself needs ComfyUI and is the top-level `lora_training` package, loaded by name.
- `cli/`: `python -m hypernet <command>`, one module per command, argument parsing only.

Lower layers never import higher ones (common < lora, encoders < model < data < pipeline, collect < cli).
Submodules are imported where used so that `import hypernet` stays cheap for the node pack.
"""
__version__ = "0.1.0"
GENERATOR = f"comfyui-lora-hypernet {__version__}"
