"""`train --config auto`: training settings chosen from the collection instead of a fixed preset
(issue 19). Everything here is our own choice, beyond LoRA Diffusion and DiffLoRA.

By rule, from the dataset (`auto_train_config`):

- autoencoder: up to 400 k values per LoRA the `linear` one (the leading principal directions of
  the aligned, normalised training LoRAs, fitted in closed form: on the issue-19 grid it
  reconstructs held-out LoRAs within 1.5x the noise floor where the trained MLP VAE did not,
  benchmarks/RESULTS.md), the `chunks` VAE (as preset `sdxl`) above, where the training vectors
  would not fit in memory for a decomposition. The linear latent: of the principal directions
  that stand above the collection's noise (`directions_above_noise`), the fewest leading ones (a
  power of two, 8 to 512) that reconstruct the validation LoRAs within 1.2x the error of all of
  them (`linear_latent_size`). Directions below the noise only store each LoRA's own noise, which
  the face cannot predict, and past the knee of the error curve each is one more coordinate the
  prior must learn to draw for little of what tells identities apart (synth-100k: 407 directions
  above the noise, the leading 32 within 1.12x of their error; `auto` at latent 512 retrieved
  0.978 of the held-out identities, at 32 all of them). For the chunks VAE,
  steps for about 40 passes over the data (300 to 3,000).
- prior: preset `default`'s (AdaNorm, x0, measured in benchmarks/RESULTS.md), at most 2,000
  steps, early-stopped on a validation split of the training identities (trainer.py), scored
  every 50 steps and stopped after 6 scores without improvement. Its learning rate is searched:
  one early-stopped run at each of PRIOR_LRS from the same initial weights, all runs sharing the
  2,000 steps (a run gets what the runs before left, if that is at least the step at which the
  best run so far reached its lowest loss), the run with the lowest validation loss kept (ties:
  the preset's 1e-3). The shared budget keeps training no longer than one run (synth-100k's first
  run stops at step 1,800, its best at 1,500: no second run). On the grid's small cells the
  prior's validation loss reaches its lowest within 100 to 600 steps and then rises every score
  after (it learns the fit identities' noise: fit loss 0.01 by step 800), so a patience of 300 steps stops where 500 did; on 2,000 identities
  it falls through all 2,000 steps (after a plateau from step 300 to 600), so that run is the
  only one and training takes what it took (benchmarks/RESULTS.md, issue 19 part 9). Where the
  runs early-stop, the search costs about twice the one run it replaces.
- offset "ridge": the prior models the residual around a ridge map face -> latent, so the part a
  linear map explains needs no learning and an untrained or early-stopped prior still gives it.

On the validation split, after training (`choose_sampling`), candidates for what answers a face
are scored by how well their LoRAs retrieve the validation identities (top-1, then delta-W
error) and all scores are recorded in the checkpoint (`auto` metadata). Ridge regression from the
face to the LoRA is the baseline: a candidate replaces it only where it is ahead of it by the
one-sided 5 % point of the paired difference on the validation identities (more identities
retrieved, or as many and a smaller delta-W error), and the best such candidate is kept. A
validation tenth holds a few dozen identities, where one or two retrievals more are chance, and
about 18 candidates meet the baseline: without the rule (and at one standard error) a candidate
that drew lucky there replaced the baseline and lost to it on held-out identities (the grid's
fourier and manifold-2 cells); at two standard errors a prior that was truly ahead was refused
(issue-19-small). Where the prior's own ridge offset beats the baseline too, the prior must beat
that offset by the same test: the prior is the offset plus a learnt residual, and a residual that
learnt nothing tied its offset on the grid's linear cell (22 of 36 identities each), won the
ranking by 1e-5 of delta-W error, and retrieved 0.550 of the held-out identities where the offset,
refitted on every training identity, retrieved 0.750 (benchmarks/RESULTS.md, issue 19 part 11).
The candidates:

- the trained prior at temperature 1, 0.5 or 0 times the starting noise, at the guidance chosen
  before the race: the default, 3, unless another of GUIDANCES beats it on the validation
  identities by the same test a candidate must pass against ridge (deterministic samples,
  temperature 0). Guidance moved held-out top-1 in both directions on the grid's prior cells
  (scale-1e-1: 0.275 at 1, 0.225 at 3; issue-19-small: 0.092 at 5, 0.075 at 3), so no one value
  serves every collection; but the differences were one to three identities of 40, and choosing
  the best on validation without the test picked the worse guidance on three cells of three
  (benchmarks/RESULTS.md, issue 19 part 8). It is chosen outside the race so that the race keeps
  its about 18 candidates; it is stored in the checkpoint
  (HypernetConfig.guidance), which `sample`, `evaluate` and `evaluate-images` use unless told
  otherwise and Load Hypernet's info names for the Sample LoRA node;
- "ridge": the prior's ridge offset alone, its residual switched off;
- "ridge-lora": ridge regression from the face to the LoRA itself (evaluate's baseline, not
  limited by the autoencoder's reconstruction error), stored low-rank;
- "kernel": the softmax-weighted mean of the latents of the k most similar training faces
  (k 1: the nearest training identity), for a grid of k and softmax temperatures.

A point sampler (ridge, kernel) chosen on the fit identities is then refitted on all training
identities, fit and validation (point_samplers.py). When no candidate beats ridge regression
from the face to the LoRA (evaluate's baseline), training says so in one line, records it, and
the checkpoint samples that ridge map.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..data.dataset import LoraDataset
from ..model.hypernet import DEFAULT_GUIDANCE, Hypernet
from ..model.autoencoder import directions_above_noise
from ..model.point_samplers import SamplerConfig, kernel_mean
from ..lora.alignment import align, reference_factors
from ..lora.vectorize import Normalizer
from .evaluate import delta_rel_err
from .metrics import compare_rows
from .ridge import choose_lambda, ridge_linear_map, ridge_low_rank, validation_split
from .sampling import DEFAULT_STEPS, sample_latents
from .train_config import PRESETS, TrainConfig, _merge

# Up to this many values per LoRA the linear autoencoder's float64 decomposition of the training
# vectors fits in memory (6.4 GB at 2,000 identities); above, the chunks VAE.
LINEAR_LIMIT = 400_000
TEMPERATURES = (1.0, 0.5, 0.0)
# The prior's learning rates tried (preset default's first: it is kept on a tie). 3e-3 was tried
# too and had the highest validation loss on all five collections where it ran: where the prior
# early-stops, a faster rate reaches its lowest loss sooner and higher; where it does not (2,000
# identities), the budget leaves no second run (benchmarks/RESULTS.md, issue 19 part 9).
PRIOR_LRS = (1e-3, 3e-4)
GUIDANCES = (1.0, 2.0, 3.0, 5.0)
# Kernel grid: neighbours averaged, and softmax temperatures on the cosine similarity (random
# 512-d faces lie at cosine 0 +- 0.04, neighbours on a face manifold far closer).
KERNEL_KS = (1, 4, 16, 64)
KERNEL_TAUS = (0.01, 0.03, 0.1, 1.0)
# Rank of a stored ridge-lora map: 256 x D values, about what the dense autoencoder's two outer
# layers hold; a 512-d face allows rank 512, whose second half carries little on our collections.
RIDGE_LORA_RANK = 256
# Standard errors by which a candidate must beat ridge face -> LoRA on the validation identities:
# the one-sided 5 % point, as only "better than ridge" replaces it. About 18 candidates meet one
# baseline on a few dozen identities, so the best of them is ahead by chance more often than one
# comparison would be: at one standard error a prior ahead by 2 of 36 identities to 0 (1.41) was
# chosen on the grid's manifold-2 cell and retrieved none of 40 held out, where ridge retrieved 3.
# At two, a prior ahead by 6 to 1 of 108 (1.89) was refused on issue-19-small and ridge kept,
# which retrieved 1 of 120 held out; chosen now, that prior retrieves 9 (benchmarks/RESULTS.md,
# part 7). On the grid's records no other cell's choice differs between the two.
SIGNIFICANCE = 1.645
# The linear autoencoder's latent: the fewest leading principal directions (a power of two, or all
# above the noise) that reconstruct the validation LoRAs within this factor of all above the noise,
# within LATENT_RANGE. Every direction is a coordinate the prior must learn to draw, and beyond the
# knee of the error curve one carries little of what tells identities apart (on synth-100k: 407
# directions above the noise, the leading 32 within 12 % of their error).
RECONSTRUCTION_TOLERANCE = 1.2
LATENT_RANGE = (8, 512)


def linear_latent_size(dataset: LoraDataset, normalizer: str = "dim", seed: int = 0) -> tuple[int, str]:
    """(latent size for the linear autoencoder, why). The training LoRAs' fit rows are prepared as
    the trainer prepares them (aligned, normalised); of their principal directions above the noise,
    the fewest leading ones (a power of two, or all) that reconstruct the validation rows within
    RECONSTRUCTION_TOLERANCE of the error with all of them."""
    vectors, _, _ = dataset.load("train")
    vectors = vectors[torch.isfinite(vectors).all(1)]  # the trainer refuses the others, with their names
    fit, val = validation_split(len(vectors), seed)
    layout = dataset.layout
    reference = reference_factors(vectors[fit], layout)
    fit_rows, val_rows = align(vectors[fit], reference, layout), align(vectors[val], reference, layout)
    norm = Normalizer.fit(fit_rows, layout, normalizer)
    basis = directions_above_noise(norm.normalize(fit_rows))
    signal = len(basis)
    if signal <= LATENT_RANGE[0]:
        return LATENT_RANGE[0], f"{signal} directions of the training LoRAs stand above their noise"
    projected = norm.normalize(val_rows).double() @ basis.T

    def error(k: int) -> float:
        return delta_rel_err(norm.denormalize((projected[:, :k] @ basis[:k]).float()), val_rows, layout)

    full = error(signal)
    largest = min(signal, LATENT_RANGE[1])
    powers = (2 ** e for e in range(LATENT_RANGE[0].bit_length() - 1, LATENT_RANGE[1].bit_length()))
    for k in [p for p in powers if p < largest] + [largest]:
        k_error = error(k)
        if k_error <= RECONSTRUCTION_TOLERANCE * full:
            break
    return k, (f"{signal} directions of the training LoRAs stand above their noise; the leading {k} reconstruct "
               f"the validation LoRAs with delta-W error {k_error:.3f}, all {signal} with {full:.3f}")


def auto_train_config(dataset: LoraDataset, seed: int = 0, condition: str = "face") -> tuple[TrainConfig, list[str]]:
    """(the config, one line per choice saying what it was chosen from)."""
    n = len(dataset.ids("train"))
    fit = n - max(1, round(n * 0.1))
    values = dataset.layout.num_values
    linear = values <= LINEAR_LIMIT
    base = _merge(dataclasses.asdict(TrainConfig()), PRESETS["default" if linear else "sdxl"])
    ae_steps = min(3000, max(300, round(40 * fit / base["ae_batch"])))
    if linear:
        latent, why = linear_latent_size(dataset, base["normalizer"], seed)
        base["autoencoder"].update(kind="linear", latent_dim=latent)
        base["latent_normalizer"] = "global"
        autoencoder = f"autoencoder linear (principal directions, closed form), latent {latent}: {why}"
    else:
        autoencoder = f"autoencoder {base['autoencoder']['kind']}, {ae_steps} steps (about 40 passes)"
    reasons = [f"{n} training identities, {fit} to fit and {n - fit} to validate on; {values:,} values per LoRA",
               autoencoder,
               "prior: the residual around a ridge map face -> latent, early-stopped on the validation identities "
               f"(at most 2,000 steps), at the learning rate of {', '.join(f'{lr:g}' for lr in PRIOR_LRS)} whose "
               "run reaches the lowest validation loss (the runs share the 2,000 steps)"]
    base.update(seed=seed, condition=condition, ae_steps=ae_steps, prior_steps=2000, validation_every=50,
                patience=6, offset="ridge", choose_sampling=True, checkpoint_every=100, prior_lr_search=PRIOR_LRS)
    return TrainConfig.from_dict(base), reasons


def _choose_guidance(model: Hypernet, cond: torch.Tensor, val_vectors: torch.Tensor) -> tuple[float, dict, dict]:
    """(the prior's guidance, every guidance's scores, every guidance's compare_rows answer: the race
    reuses the chosen one's as its temperature-0 prior). The temperature-0 samples at each of
    GUIDANCES are scored on the validation identities; another guidance replaces the default
    only where it beats the default's samples as a candidate must beat ridge (`beats_baseline`),
    and of those the one retrieving the most identities (then: the smallest delta-W error) wins.
    Held-out top-1 moved by one to three identities of 40 between guidances on the grid's prior
    cells, in no common direction: without the test the choice follows the validation split's luck."""
    model.config = dataclasses.replace(model.config, temperature=0.0)
    scores, compared = {}, {}
    for guidance in GUIDANCES:
        latents = sample_latents(model, cond, seed=0, steps=DEFAULT_STEPS, guidance=guidance)
        compared[guidance] = compare_rows(model.decode_latents(latents), val_vectors, model.layout)
        result = compared[guidance][0]
        scores[f"{guidance:g}"] = {"top1": result["top1"], "rel_err": result["rel_err"]}
    rows = {g: compared[g][1] for g in GUIDANCES}
    ahead = [g for g in GUIDANCES if g != DEFAULT_GUIDANCE and beats_baseline(rows[g], rows[DEFAULT_GUIDANCE])]
    best = max(ahead, key=lambda g: (scores[f"{g:g}"]["top1"], -scores[f"{g:g}"]["rel_err"]), default=DEFAULT_GUIDANCE)
    return best, scores, compared


def _candidates(model: Hypernet, fit_latents: torch.Tensor, fit_face: torch.Tensor, cond: torch.Tensor,
                guidance: float):
    """(name, what it changes, a function giving the validation latents) for every candidate."""
    for temperature in TEMPERATURES:
        def prior(temperature=temperature):
            model.config = dataclasses.replace(model.config, temperature=temperature)
            return sample_latents(model, cond, seed=0, steps=DEFAULT_STEPS, guidance=guidance)
        yield f"prior, temperature {temperature:g}", ("prior", temperature), prior
    if model.config.offset == "ridge":
        yield "ridge", ("ridge",), lambda: model.latent_offset(cond)
    for k in sorted({min(k, len(fit_latents)) for k in KERNEL_KS}):
        for tau in (KERNEL_TAUS if k > 1 else KERNEL_TAUS[:1]):  # one neighbour: tau changes nothing
            yield (f"kernel, k {k}, tau {tau:g}", ("kernel", k, tau),
                   lambda k=k, tau=tau: kernel_mean(cond, fit_face, fit_latents, k, tau))


def _ridge_lora(face: torch.Tensor, vectors: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    """The ridge-lora sampler's tensors: ridge face -> LoRA (aligned factors), lambda chosen by
    delta-W error on a split of these rows as evaluate's baseline chooses it."""
    lam, _ = choose_lambda(face, vectors, lambda p, t: delta_rel_err(p, t, layout))
    a, b, bias = ridge_low_rank(face, vectors, lam, RIDGE_LORA_RANK)
    return {"ridge_in": a, "ridge_out": b, "ridge_bias": bias}


def _apply(model: Hypernet, choice: tuple, face: torch.Tensor, latents: torch.Tensor,
           vectors: torch.Tensor, guidance: float) -> None:
    """Make the checkpoint sample the chosen candidate; a point sampler learns from all training rows."""
    prior = choice[0] == "prior"
    model.config = dataclasses.replace(model.config, temperature=choice[1] if prior else 1.0,
                                       guidance=guidance if prior else DEFAULT_GUIDANCE)
    if choice[0] == "ridge":
        lam, _ = choose_lambda(face, latents, lambda p, t: float((p - t).square().mean()))
        weight, bias = ridge_linear_map(face, latents, lam)
        model.norm.offset_weight.copy_(weight)
        model.norm.offset_bias.copy_(bias)
        model.use_sampler(SamplerConfig("ridge"))
    elif choice[0] == "ridge-lora":
        tensors = _ridge_lora(face.cpu(), vectors, model.layout)
        model.use_sampler(SamplerConfig("ridge-lora", rank=tensors["ridge_in"].shape[1]), **tensors)
    elif choice[0] == "kernel":
        model.use_sampler(SamplerConfig("kernel", k=choice[1], tau=choice[2], rows=len(latents)),
                          kernel_keys=face, kernel_latents=latents)


@torch.no_grad()
def choose_sampling(model: Hypernet, fit: tuple[torch.Tensor, torch.Tensor],
                    validation: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Make the model sample the best candidate that beats ridge face -> LoRA on the validation rows
    (that ridge map where none does) and return the record: {"sampler", "temperature", "guidance"
    (the prior's, else the default), "guidance_search" ({guidance: {top1, rel_err}} of the prior's
    temperature-0 samples), "validation": {candidate: {top1, rel_err}}, "ridge", "evidence" (each candidate's
    paired_evidence against it), "versus_offset" (each prior candidate's against its ridge offset),
    "significant" (the candidates that beat it, less priors that do not beat an offset that beats
    it), "beats_ridge", "statement"}. `fit`: the fit rows' (aligned vectors, normalised faces)."""
    (fit_vectors, fit_face), (val_vectors, val_face) = fit, validation
    device = model.norm.mean.device
    fit_face, val_face = fit_face.to(device), val_face.to(device)
    fit_latents = model.encode_vectors(fit_vectors).to(device)
    cond = model.condition_vectors(val_face, None)
    scores, choices, rows = {}, {}, {}
    guidance, guidance_search, searched = _choose_guidance(model, cond, val_vectors)
    for name, choice, latents in _candidates(model, fit_latents, fit_face, cond, guidance):
        if choice == ("prior", 0.0):  # the guidance search drew these very samples (same seed, steps, guidance)
            result, rows[name] = searched[guidance]
        else:
            result, rows[name] = compare_rows(model.decode_latents(latents()), val_vectors, model.layout)
        scores[name], choices[name] = {"top1": result["top1"], "rel_err": result["rel_err"]}, choice
    # ridge regression to the LoRA itself: evaluate's baseline, and a candidate like the others
    ridge = _ridge_lora(fit_face.cpu(), fit_vectors, model.layout)
    predicted = (val_face.cpu() @ ridge["ridge_in"]) @ ridge["ridge_out"] + ridge["ridge_bias"]
    result, rows["ridge-lora"] = compare_rows(predicted, val_vectors, model.layout)
    ridge = scores["ridge-lora"] = {"top1": result["top1"], "rel_err": result["rel_err"]}
    choices["ridge-lora"] = ("ridge-lora",)
    best, evidence, versus_offset, significant = race_winner(scores, rows, choices)
    all_vectors = torch.cat([fit_vectors, align(val_vectors, model.norm.reference.cpu(), model.layout)])
    _apply(model, choices[best], torch.cat([fit_face, val_face]),
           torch.cat([fit_latents, model.encode_vectors(val_vectors).to(device)]), all_vectors, guidance)
    score = scores[best]
    beats = best not in ("ridge", "ridge-lora")
    top = max(scores, key=lambda k: (scores[k]["top1"], -scores[k]["rel_err"]))
    n = len(val_vectors)  # top-1 moves in steps of 1/n: the counts say how much a difference weighs
    versus = (f"validation top-1 {score['top1']:.3f} ({round(score['top1'] * n)} of {n} identities; delta-W error "
              f"{score['rel_err']:.3f}) against ridge regression's {ridge['top1']:.3f} ({round(ridge['top1'] * n)} "
              f"of {n}; {ridge['rel_err']:.3f})")
    if beats:
        at = f", guidance {model.config.guidance:g}" if choices[best][0] == "prior" else ""
        statement = f"the hypernet ({best}{at}) beats the ridge baseline on the validation identities: {versus}"
    elif best == "ridge":
        statement = (f"could not beat the ridge baseline with the trained prior: the best candidate is ridge regression "
                     f"face -> latent through the autoencoder ({versus}), so the checkpoint samples that map and the "
                     "trained prior is not used")
    else:
        closest = "" if top == "ridge-lora" else (
            f"; the closest candidate, {top} (top-1 {scores[top]['top1']:.3f}, delta-W error "
            f"{scores[top]['rel_err']:.3f}), is not {SIGNIFICANCE:g} standard errors ahead of it")
        statement = (f"could not beat the ridge baseline on the validation identities{closest}, so the checkpoint "
                     "samples ridge regression face -> LoRA and the trained prior is not used: for this collection "
                     "ridge regression from the face embedding predicts the LoRA as well as the hypernet does")
    return {"sampler": best, "temperature": model.config.temperature, "guidance": model.config.guidance,
            "guidance_search": guidance_search, "validation": scores, "ridge": ridge, "evidence": evidence,
            "versus_offset": versus_offset, "significant": significant,
            "beats_ridge": beats, "statement": statement}


def race_winner(scores: dict[str, dict], rows: dict[str, dict[str, torch.Tensor]], choices: dict[str, tuple]):
    """(the winner, each candidate's paired_evidence against ridge face -> LoRA, each prior's
    against its ridge offset, the candidates that may win). The best by (top-1, -delta-W error) of
    the candidates that beat ridge face -> LoRA by `beats_baseline`, that ridge map where none does.
    The prior is its ridge offset plus a residual: where the offset beats the baseline too, a prior
    candidate must beat the offset as well, or the residual's noise decides between them."""
    evidence = {name: paired_evidence(rows[name], rows["ridge-lora"]) for name in scores if name != "ridge-lora"}
    significant = [name for name in evidence if beats_baseline(rows[name], rows["ridge-lora"])]
    versus_offset = {name: paired_evidence(rows[name], rows["ridge"]) for name in scores
                     if "ridge" in rows and choices[name][0] == "prior"}
    if "ridge" in significant:
        significant = [name for name in significant
                       if name not in versus_offset or beats_baseline(rows[name], rows["ridge"])]
    best = max(significant, key=lambda k: (scores[k]["top1"], -scores[k]["rel_err"]), default="ridge-lora")
    return best, evidence, versus_offset, significant


def paired_evidence(candidate: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor]) -> dict[str, float]:
    """How far a predictor is ahead of the baseline on the same rows, in standard errors of the
    paired difference: `z_top1`, the gain in rows retrieved against the square root of the rows
    where the two disagree (McNemar), and `t_rel_err`, the mean paired drop in delta-W error
    against its standard error."""
    gain = int(candidate["hit"].sum()) - int(baseline["hit"].sum())
    disagree = int((candidate["hit"] != baseline["hit"]).sum())
    diff = (baseline["rel_err"] - candidate["rel_err"]).double()
    spread = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    mean = float(diff.mean()) if len(diff) else 0.0
    t = mean / max(spread, 1e-12)  # finite, so the checkpoint's JSON record stays strict JSON
    return {"gain": gain, "disagree": disagree, "z_top1": gain / math.sqrt(disagree) if disagree else 0.0,
            "t_rel_err": t}


def beats_baseline(candidate: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor]) -> bool:
    """More rows retrieved by at least SIGNIFICANCE standard errors, or as many and a delta-W error
    smaller by as much."""
    evidence = paired_evidence(candidate, baseline)
    if evidence["gain"] > 0 and evidence["z_top1"] >= SIGNIFICANCE:
        return True
    return evidence["gain"] >= 0 and evidence["t_rel_err"] >= SIGNIFICANCE
