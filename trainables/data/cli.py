"""The data commands: fetch PCam, write the embedded digits set, check a dataset folder.

    python -m trainables.data download --root data/pcam
    python -m trainables.data digits --root DIR
    python -m trainables.data check --root DIR [--prefix digits]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from trainables.data.datasets import (
    DIGITS_PREFIX, PCAM_PREFIX, SPLITS, HDF5ImageDataset, data_fingerprint, ensure_digits,
)


def _describe(root: Path, prefix: str) -> str:
    lines = [f"{root} ({prefix})"]
    for split in SPLITS:
        dataset = HDF5ImageDataset(root, split, prefix=prefix)
        positives = int(dataset.targets.sum())
        lines.append(
            f"  {split:5s}  n={len(dataset):7d}  size={dataset.native_size}  "
            f"positive={positives / len(dataset):.3f}"
        )
    lines.append(f"  fingerprint {data_fingerprint(root, prefix)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the data CLI (download, digits, check); return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m trainables.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="fetch, verify and unpack PCam from Zenodo")
    download.add_argument("--root", type=Path, default=Path("data/pcam"))
    download.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    download.add_argument(
        "--checksums", type=Path, default=None,
        help="md5sum-style file ('<md5>  <name>.h5.gz' per line) overriding the built-in and Zenodo checksums",
    )
    download.add_argument("--keep-archives", action="store_true", help="keep the .h5.gz files after unpacking")
    digits = commands.add_parser("digits", help="write the embedded scikit-learn digits dataset")
    digits.add_argument("--root", type=Path, required=True)
    check = commands.add_parser("check", help="validate a dataset folder and print its sizes and fingerprint")
    check.add_argument("--root", type=Path, required=True)
    check.add_argument("--prefix", default=PCAM_PREFIX)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        if args.command == "download":
            from trainables.data.pcam_download import download_pcam

            download_pcam(args.root, splits=args.splits, checksum_file=args.checksums, keep_archives=args.keep_archives)
            print(_describe(args.root, PCAM_PREFIX))
        elif args.command == "digits":
            print(_describe(ensure_digits(args.root), DIGITS_PREFIX))
        else:
            print(_describe(args.root, args.prefix))
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
