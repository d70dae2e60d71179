"""`python -m hypernet <command>`: the command-line face of the library.

Each command lives in its own module here exposing `add_arguments(parser)` and `run(args) -> int`
and calls the library; modules are imported only when their command runs, so `--help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import HypernetError

COMMANDS = {
    "synth": ("synth", "write a synthetic collection of identity LoRAs"),
    "collect": ("collect", "train one identity LoRA per folder of photos (locally or on Ray)"),
    "dataset": ("dataset", "build a training dataset from identity folders"),
    "import-w2w": ("import_w2w", "write the weights2weights collection as identity folders (SD1.5)"),
    "train": ("train", "train the weight autoencoder and the diffusion prior"),
    "sample": ("sample", "sample a LoRA for a face and write it as .safetensors"),
    "identity-scale": ("identity_scale", "copy a hypernet with its LoRAs moved further from the mean LoRA"),
    "evaluate": ("evaluate", "measure a checkpoint on held-out identities"),
    "evaluate-images": ("evaluate_images", "identity similarity of what the base model draws with each method's LoRA"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypernet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module_name, help_text = COMMANDS[argv[0]]
    module = importlib.import_module(f"{__name__}.{module_name}")
    cmd_parser = argparse.ArgumentParser(prog=f"python -m hypernet {argv[0]}", description=help_text)
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (HypernetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
