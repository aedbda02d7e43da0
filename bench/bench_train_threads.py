"""Train-step seconds of digits-vit at batch 64 with 1 and 2 torch threads, interleaved (wall and CPU).

CPU seconds per step at 2 threads against 1 bound what a second core can give (speedup <=
2 x cpu_1 / cpu_2) even on a busy machine; wall seconds show what it gives now. OpenMP's
wait policy is read at start-up, so compare `OMP_WAIT_POLICY=PASSIVE python bench/...` (what
the digits preset's Train workers use) with a plain run.

    python bench/bench_train_threads.py [ROUNDS]
"""
import os
import sys
import time

import torch

from trainables.model import build_classifier

torch.manual_seed(0)
model = build_classifier("digits-vit", 10)
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x = torch.randn(64, 3, 32, 32); y = torch.randint(0, 10, (64,))


def steps(n):
    for _ in range(n):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


res = {1: [], 2: []}
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    for t in (1, 2):
        torch.set_num_threads(t)
        steps(2)
        w, c = time.perf_counter(), time.process_time()
        steps(10)
        res[t].append((time.perf_counter() - w, time.process_time() - c))
for t, v in res.items():
    print(t, "threads: wall/step", [round(a / 10, 4) for a, _ in v], "cpu/step", [round(b / 10, 4) for _, b in v])
print("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "(default)"), "load average", os.getloadavg())
