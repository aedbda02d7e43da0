"""The parameter reduction of the notes' seed thresholds on a ViT-S/16, part by part.

The notes report -7.0% parameters for tau = [0.89, 0.975, 0.975] (heads, MLP units, SVD energy)
on their fine-tuned DINOv3 ViT-S/16. This script applies the same plan (raw SVD, every target
role) one part at a time and all together, and prints the reduction beside the notes' figure:

  python bench/bench_seed_params.py                          # random-init ViT-S/16 (no download)
  python bench/bench_seed_params.py --weights DIR_OR_HF_ID   # the DINOv3 weights (or a trial's export:
                                                             # --export NAME --trial reference)

Random init has flat spectra and equal heads, so it is a lower bound on what the energy rules
keep, not the notes' figure: a weight whose energy is spread evenly needs nearly all of it.
Load-independent (counts only).
"""

import argparse
from pathlib import Path

import torch

from compress import CompressionPlan, compress_model, count_params
from trainables.model import build_classifier

NOTES_FIGURE = -0.070
SEED_TAUS = {"tau_heads": 0.89, "tau_mlp": 0.975, "tau_svd": 0.975}


def load_model(weights: str | None) -> torch.nn.Module:
    if weights and (Path(weights) / "structure.json").is_file():
        from compress import load_compressed

        return load_compressed(weights).eval()
    torch.manual_seed(0)
    return build_classifier("dinov3-vits16", 2, weights=weights or None).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="DINOv3 weights (directory or Hugging Face id) or an export")
    args = parser.parse_args()
    model = load_model(args.weights)
    before = count_params(model)
    print(f"model: {'random-init ViT-S/16' if not args.weights else args.weights}, {before:,} parameters")
    parts = {"heads only": {"tau_heads": SEED_TAUS["tau_heads"]}, "MLP only": {"tau_mlp": SEED_TAUS["tau_mlp"]},
             "SVD only": {"tau_svd": SEED_TAUS["tau_svd"]}, "all three (the notes' seed)": SEED_TAUS}
    print(f"{'plan':<30} {'params after':>14} {'change':>8}   notes")
    for name, taus in parts.items():
        compressed, _ = compress_model(model, CompressionPlan(**taus, svd_space="raw"))
        after = count_params(compressed)
        notes = f"{NOTES_FIGURE:+.1%}" if taus is SEED_TAUS else ""
        print(f"{name:<30} {after:>14,} {after / before - 1:>+8.1%}   {notes}")


if __name__ == "__main__":
    main()
