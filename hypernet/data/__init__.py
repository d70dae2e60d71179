"""Training data: identity folders in, dataset shards out.

- identity_folders: scanning the source folder and reading embedding/global files.
- condition_sources: face embeddings and global features from photos or files.
- builder: build_dataset, the loop over identities with its per-identity cache.
- dataset: the dataset on disk (manifest, shards) and reading it for training.
- synth: a synthetic collection of identity LoRAs with known ground truth.
- w2w: the weights2weights collection (restricted .pt files + photo folders) as identity folders.
"""
