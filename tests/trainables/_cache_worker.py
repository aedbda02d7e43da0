"""Runs one StageCache.get_or_compute in its own process; prints the result as JSON.

usage: _cache_worker.py BASE BACKEND STAGE KEY COUNT_FILE COMPUTE_S
BACKEND is "local" (BASE/store on disk), "s3" (BASE an s3:// URI on the suite's S3 API server,
with a private scratch) or "subtree" (BASE seen through a SubTreeFileSystem, which takes the
object-store code path on local disk).
"""

import json
import os
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs

from trainables.cache import StageCache


def main() -> None:
    base, backend, stage, key, count_file, compute_s = sys.argv[1:7]
    if backend == "local":
        cache = StageCache(Path(base) / "store", poll_s=0.05, lease_s=2.0)
    elif backend == "s3":
        cache = StageCache(base, scratch_dir=Path(count_file).parent / f"scratch-{os.getpid()}",
                           poll_s=0.05, lease_s=2.0, settle_s=0.2)
    else:
        cache = StageCache(
            "store",
            filesystem=pafs.SubTreeFileSystem(base, pafs.LocalFileSystem()),
            scratch_dir=Path(base) / f"scratch-{os.getpid()}",
            poll_s=0.05,
            lease_s=2.0,
            settle_s=0.2,
        )

    def compute(tmp: Path) -> None:
        with open(count_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(float(compute_s))
        (tmp / "weights.bin").write_bytes(b"w" * 1000)

    result = cache.get_or_compute(stage, key, compute)
    content = (result.path / "weights.bin").read_bytes()
    print(json.dumps({"hit": result.hit, "path": str(result.path), "size": len(content)}))


if __name__ == "__main__":
    main()
