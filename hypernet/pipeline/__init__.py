"""Training, sampling and evaluation as library functions; the CLI and the nodes call them.

- training.py: `train()`, dataset folder -> hypernet file; train_config.py (TrainConfig, presets,
  --config files), train_state.py (the OUT.resume file), trainer.py (the two training loops).
- sampling.py: DDIM sampling of latents and their decoding, and the sampling defaults every
  caller uses; condition_inputs.py (which inputs a checkpoint takes, and the errors when the
  wiring does not fit); sampling_inputs.py (those inputs from files and photos); outputs.py
  (the LoRA file written from a sample).
- evaluate.py: a checkpoint on held-out identities, with metrics.py (distances on delta W) and
  ridge.py (the ridge regression baseline, also the offset of the adaptive prior).
"""
