#!/usr/bin/env bash
# GPU checks of issue 13, as one script for a short device lease (NOT YET RUN: no GPU was lent).
#
#   bash bench/gpu_check.sh            # from the repository root; writes under ${OUT:-gpu-check}
#
# 1. nvidia-smi sampling GPU utilisation every 0.5 s for the whole script (util.csv);
# 2. pcam-local --smoke on the GPU (Ray Tune + a 1-GPU Ray Train run, the real code path);
# 3. ViT-S/16 training img/s at 96 and 224 px in bf16 with the block-read data path
#    (uint8 batches, transforms on the GPU), and latency with CUDA synchronisation,
#    coefficient of variation over 5 measurements.
set -euo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export RAY_USAGE_STATS_ENABLED=0 WANDB_MODE=offline RAY_AUTH_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -lms 500 > "$OUT/util.csv" &
SMI=$!
trap 'kill $SMI 2>/dev/null || true' EXIT

start=$(date +%s)
timeout 300 python tune/run.py --preset pcam-local --smoke --name gpu-smoke --results-dir "$OUT/results" \
    > "$OUT/smoke.log" 2>&1 || echo "smoke failed: see $OUT/smoke.log"
echo "smoke wall s: $(( $(date +%s) - start ))" | tee -a "$OUT/summary.txt"

timeout 240 python - "$OUT" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import statistics, sys, tempfile, time
from pathlib import Path
import torch
from trainables.config import TrialConfig
from trainables.finetune import configure_method
from trainables.data.loader import HDF5BlockReader, block_loader
from trainables.model import build_classifier
from trainables.data.synthetic import write_synthetic_pcam

device = torch.device("cuda")
root = Path(tempfile.mkdtemp())
write_synthetic_pcam(root, counts={"train": 4096, "valid": 128, "test": 128})
for size in (96, 224):
    for method in ("lora", "full"):
        model = configure_method(build_classifier("dinov3-vits16", 2), TrialConfig.from_flat({"finetune.method": method})).to(device)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        reader = HDF5BlockReader(root, "train", image_size=size)
        loader = block_loader(reader, 256, device, shuffle=True, seed=0, augment=True, workers=4)
        seen, started = 0, None
        for step, (x, y) in enumerate(loader):
            if step == 2:
                torch.cuda.synchronize(); started = time.perf_counter(); seen = 0
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(); loss.backward(); opt.step(); seen += len(y)
        torch.cuda.synchronize()
        print(f"train {method} {size}px bf16 batch 256: {seen / (time.perf_counter() - started):.0f} img/s")
    model.eval()
    x = torch.randn(64, 3, size, size, device=device)
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(x)
        for _ in range(5):
            torch.cuda.synchronize(); t = time.perf_counter(); model(x); torch.cuda.synchronize()
            times.append((time.perf_counter() - t) / 64 * 1e3)
    cv = statistics.stdev(times) / statistics.mean(times)
    print(f"latency {size}px batch 64 bf16: {statistics.median(times):.3f} ms/img, CV {cv:.1%} over 5")
PY
kill $SMI 2>/dev/null || true
python - "$OUT/util.csv" <<'PY' | tee -a "$OUT/summary.txt"
import sys
rows = [line.split(",") for line in open(sys.argv[1]) if line.strip()]
util = [float(r[1].strip().rstrip(" %")) for r in rows if len(r) > 1]
print(f"GPU utilisation over {len(util)} samples: mean {sum(util) / max(1, len(util)):.0f}%, busy (>50%) {sum(u > 50 for u in util) / max(1, len(util)):.0%}")
PY
