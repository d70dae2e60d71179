"""The model layer: weight autoencoder, conditional prior (denoiser) and diffusion, one Hypernet.

- autoencoder.py: AutoencoderConfig, the MLP and chunk autoencoders, KL and delta-W losses.
- embeddings.py: sinusoid features (chunk positions, diffusion timesteps).
- diffusion.py: DiffusionConfig, cosine schedule, training targets, DDIM sampling steps.
- condition.py: what the prior is conditioned on (face, global, face+global fusion).
- prior_config.py: PriorConfig, the prior's settings for both denoiser kinds.
- lowrank.py: ADALoRA's low-rank factors A(c), B(c), shared by both denoisers' blocks.
- denoiser_base.py: what both denoisers share (null condition, timestep embedding).
- denoiser_mlp.py: the residual MLP denoiser (AdaNorm and ADALoRA blocks, PreparedCondition).
- denoiser_transformer.py: the token transformer denoiser.
- denoisers.py: build_denoiser, the denoiser PriorConfig.kind asks for.
- hypernet.py: HypernetConfig and Hypernet (normalisers + autoencoder + prior + diffusion).
- config_bounds.py: checks a checkpoint's config against its tensors before anything is built.
- checkpoint.py: saving and loading hypernet .safetensors checkpoints.
- messages.py: quoting untrusted values in one-line error messages.
"""
