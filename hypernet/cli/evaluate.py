"""`python -m hypernet evaluate`: measure a checkpoint on held-out identities (hypernet.pipeline.evaluate)."""
from __future__ import annotations

import argparse
import json

from ..data.dataset import open_dataset
from ..errors import HypernetError
from ..model.checkpoint import load_hypernet
from ..pipeline.evaluate import evaluate
from ..pipeline.noise_floor import noise_floor
from ..pipeline.sampling import DEFAULT_ETA, DEFAULT_STEPS, GUIDANCE_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="hypernet checkpoint")
    parser.add_argument("--data", required=True, help="dataset folder with held-out identities")
    parser.add_argument("--seeds", type=int, default=2, help="samples per identity")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    parser.add_argument("--eta", type=float, default=DEFAULT_ETA)
    parser.add_argument("--limit", type=int, help="evaluate only the first N held-out identities")
    parser.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    parser.add_argument("--truth", metavar="SRC",
                        help="the collection the dataset was built from, when it holds each identity's noiseless "
                             "LoRA (synth --truth): reports the noise floor (`noise_floor`, else null)")


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise HypernetError("--seeds must be at least 1")
    dataset = open_dataset(args.data)
    # the noise floor first: a wrong --truth fails before minutes of sampling
    floor = noise_floor(dataset, args.truth, args.limit) if args.truth else None
    result = evaluate(load_hypernet(args.ckpt), dataset, seeds=args.seeds, steps=args.steps,
                      guidance=args.guidance, eta=args.eta, limit=args.limit, progress=not args.json)
    result["noise_floor"] = floor
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'measure':<34}{'top1':>8}{'cosine':>9}")
    for label, values in (("sampled", result["sampled"]), ("baseline: mean training LoRA", result["baselines"]["mean"]),
                          ("baseline: nearest embedding", result["baselines"]["nearest_embedding"]),
                          *((("baseline: ridge regression", result["baselines"]["ridge"]),)
                            if "ridge" in result["baselines"] else ()),
                          ("ceiling: autoencoder reconstruction", result["ceiling"])):
        print(f"{label:<34}{values['top1']:>8.3f}{values['cosine']:>9.3f}")
    if floor is not None:
        print(f"{'noise floor: noiseless LoRAs':<34}{floor['top1']:>8.3f}{floor['cosine']:>9.3f}"
              f"   (relative error {floor['rel_err']:.4f})")
    print(f"reconstruction relative error {result['recon']['rel_err']:.4f}; sample diversity "
          f"{result['sampled']['diversity']:.4f}; {result['count']['heldout']} held-out identities; "
          f"condition {result['condition']}")
    return 0
