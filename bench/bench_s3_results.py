"""A cached trial with its results on an S3 API server against the same trial on local disk.

One tiny digits trial (one pretrain epoch, a small fine-tune) is computed once into a local
results folder; its cache is then copied to a bucket on an S3 API server started here (moto's
ThreadedMotoServer on 127.0.0.1, what the tests use). Then the same trial config, all of its
training stages cache hits, runs in this process against the two roots in alternation, ROUNDS
times each: a remote hit reads each entry's manifest from the bucket and checks the files of
its scratch copy (the first one downloads them); a local hit checks the files in place.
Printed: the median wall seconds per trial on each and their ratio (S3 / local), and the median
of the paired per-round ratios, so load that drifts over the run cancels.

    python bench/bench_s3_results.py [ROUNDS]      # default 10
"""
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import logging  # noqa: E402

import boto3  # noqa: E402
import pyarrow.fs  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from trainables.trial import TrialContext, run_trial  # noqa: E402
from tune.presets import PRESETS  # noqa: E402
from tune.sweep import build_base  # noqa: E402

TINY = {"pretrain.epochs": 1, "finetune.epochs": 1, "data.train_limit": 128, "data.val_limit": 64,
        "eval.latency_repeats": 3, "eval.latency_warmup": 1, "eval.latency_rounds": 1}


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="vitsweep-bench")
    uri = f"s3://vitsweep-bench/results?endpoint_override={host}:{port}&scheme=http"
    flat = build_base(PRESETS["digits"], TINY, "compress_only")
    try:
        with tempfile.TemporaryDirectory() as local, tempfile.TemporaryDirectory() as scratch:
            os.environ["TMPDIR"] = scratch  # the remote cache's scratch copies, removed at the end
            tempfile.tempdir = None
            started = time.perf_counter()
            run_trial(dict(flat), TrialContext(results_dir=local, backend="local", show_progress=False))
            print(f"computed the trial's stages locally in {time.perf_counter() - started:.1f} s")
            fs, base = pyarrow.fs.FileSystem.from_uri(uri)
            pyarrow.fs.copy_files(f"{local}/cache", f"{base}/cache", source_filesystem=pyarrow.fs.LocalFileSystem(),
                                  destination_filesystem=fs)
            seconds: dict[str, list[float]] = {"local": [], "s3": []}
            for _ in range(rounds + 1):  # round 0 warms both (the S3 one downloads to scratch)
                for name, root in (("local", local), ("s3", uri)):
                    started = time.perf_counter()
                    metrics = run_trial(dict(flat), TrialContext(results_dir=root, backend="local",
                                                                 show_progress=False))
                    assert metrics["cache_hit_finetune"] and metrics["cache_hit_pretrain"], metrics
                    seconds[name].append(time.perf_counter() - started)
            first_s3 = seconds["s3"].pop(0)
            first_local = seconds["local"].pop(0)
    finally:
        server.stop()
    local_s, s3_s = statistics.median(seconds["local"]), statistics.median(seconds["s3"])
    paired = statistics.median(s / l for s, l in zip(seconds["s3"], seconds["local"]))
    print(f"first cached trial: local {first_local:.2f} s, S3 {first_s3:.2f} s (downloads to scratch)")
    print(f"cached trial, median of {rounds}: local {local_s:.2f} s, S3 {s3_s:.2f} s, "
          f"ratio {s3_s / local_s:.2f}x (median of paired ratios {paired:.2f}x, "
          f"+{statistics.median(s - l for s, l in zip(seconds['s3'], seconds['local'])) * 1e3:.0f} ms a trial)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
