"""Benchmark: is latency_rel more repeatable across nodes than latency_ms? (issue 27, item 6)

Starts a Ray cluster on this machine (`ray.cluster_utils.Cluster`): a head with no CPUs
and two worker nodes, A and B, with 1 CPU each and a custom resource naming each. One
timing actor is pinned to each node, as a trial actor with one CPU is: one torch thread,
the model and the uncompressed reference built once and reused. Both actors build the
same compressed model: the digits preset's ViT (seeded random init) through
`compress_model` at tau_heads / tau_mlp / tau_svd = 0.75 / 0.6 / 0.8.

Each measurement is what a trial reports, `trainables.evaluate.evaluation.cost_metrics` with the
digits preset's timing (batch 8, 10 runs a round, 3 warm-up runs, 0.1 s between rounds)
at 9 rounds: latency_ms with eval.latency_rel off, latency_rel with it on (the model
interleaved with the reference, the median per-round ratio). Per repetition each method
is measured three times in a row: on A, on A again, on B (which method goes first
alternates by repetition). For a pair of measurements x, y the spread is |x / y - 1|:
"twice on A" pairs the two on A, "A vs B" the second on A with the one on B. The
medians (and maxima) of the spreads over the repetitions are printed per method, with
the coefficient of variation and the range of all its measurements (trials on
different nodes are timed minutes apart, under whatever load each moment brings).

On one machine both nodes share the hardware, so "A vs B" measures what moving to
another process and another moment does, not another kind of device; a node whose
device is slower scales the model and the reference alike, which the ratio divides out
by construction.

Run: python bench/bench_latency_nodes.py [--repetitions 7] [--rounds 9]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's code, for the actors too

TAUS = {"compress.tau_heads": 0.75, "compress.tau_mlp": 0.6, "compress.tau_svd": 0.8}
TIMING = {"eval.latency_batch": 8, "eval.latency_repeats": 10, "eval.latency_warmup": 3,
          "eval.latency_pause_s": 0.1}
METHODS = ("latency_ms", "latency_rel")


class NodeTimer:
    """A timing actor on one node: builds the compressed model once, then measures it on request."""

    def __init__(self, rounds: int):
        import torch

        from compress import compress_model, count_params
        from trainables.config import TrialConfig
        from trainables.model import build_classifier

        torch.set_num_threads(1)
        flat = {**TAUS, **TIMING, "eval.latency_rounds": rounds}
        self.configs = {method: TrialConfig.from_flat({**flat, "eval.latency_rel": method == "latency_rel"})
                        for method in METHODS}
        cfg = self.configs["latency_ms"]
        torch.manual_seed(0)
        base = build_classifier(cfg.model.backbone, cfg.model.num_classes, None, cfg.model.pooling)
        self.params_before = count_params(base)
        self.model, _ = compress_model(base, cfg.compress)
        self.params_after = count_params(self.model)

    def describe(self) -> dict:
        """Return where this actor runs and what it times."""
        import ray
        import torch

        import trainables

        return {"node": ray.get_runtime_context().get_node_id()[:8], "threads": torch.get_num_threads(),
                "params": (self.params_before, self.params_after), "code": trainables.__file__}

    def measure(self, method: str) -> dict:
        """Return cost_metrics' latency figures of the model, timed as a trial with `method` would."""
        import torch

        from trainables.evaluate.evaluation import cost_metrics

        metrics = cost_metrics(self.model, self.configs[method], torch.device("cpu"))
        return {k: v for k, v in metrics.items() if k.startswith("latency_") and isinstance(v, float)}


def start_cluster():
    """Return (cluster, its RAY_TMPDIR): a CPU-less head and nodes A and B with 1 CPU each."""
    import ray
    from ray.cluster_utils import Cluster

    ray_tmp = tempfile.mkdtemp(prefix="vsbl", dir="/tmp")  # Ray's socket paths must stay short
    os.environ.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    for name in ("node_a", "node_b"):
        cluster.add_node(num_cpus=1, resources={name: 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, ray_tmp


def spread(x: float, y: float) -> float:
    """Return |x / y - 1|."""
    return abs(x / y - 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=7, help="measurement triples per method (>= 5)")
    parser.add_argument("--rounds", type=int, default=9, help="eval.latency_rounds of every measurement")
    args = parser.parse_args()
    if args.repetitions < 5 or args.rounds < 1:
        parser.error("--repetitions must be >= 5 and --rounds >= 1")

    import ray

    started = time.perf_counter()
    load_before = os.getloadavg()
    cluster, ray_tmp = start_cluster()
    try:
        actor = ray.remote(num_cpus=1)(NodeTimer)
        timers = {node: actor.options(resources={f"node_{node.lower()}": 1}).remote(args.rounds) for node in "AB"}
        where = {node: ray.get(timer.describe.remote()) for node, timer in timers.items()}
        for node, facts in where.items():
            print(f"node {node}: Ray node {facts['node']}, {facts['threads']} torch thread(s), params "
                  f"{facts['params'][0]} -> {facts['params'][1]}, code {facts['code']}")
        if where["A"]["node"] == where["B"]["node"]:
            raise RuntimeError("both actors landed on one node")
        ready_s = time.perf_counter() - started

        rows = {method: [] for method in METHODS}
        for repetition in range(args.repetitions):
            order = METHODS if repetition % 2 == 0 else METHODS[::-1]
            for method in order:
                a1 = ray.get(timers["A"].measure.remote(method))
                a2 = ray.get(timers["A"].measure.remote(method))
                b = ray.get(timers["B"].measure.remote(method))
                rows[method].append((a1, a2, b))
                print(f"repetition {repetition + 1} {method:<11}: A {a1[method]:.4g}, A again {a2[method]:.4g}, "
                      f"B {b[method]:.4g}" + (f"  (reference {a1['latency_ref_ms']:.4g} / {a2['latency_ref_ms']:.4g} / "
                                               f"{b['latency_ref_ms']:.4g} ms/img)" if method == "latency_rel" else ""),
                      flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    print()
    print(f"{args.repetitions} repetitions, {args.rounds} rounds per measurement, "
          f"{time.perf_counter() - started:.0f} s in all ({ready_s:.0f} s to start the cluster and actors); "
          f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print("| method | median value | spread twice on A: median (max) | spread A vs B: median (max) "
          "| all measurements: CV, max / min - 1 |")
    print("|---|---|---|---|---|")
    # The third row: the milliseconds of latency_rel's own rounds, to tell what the pairing adds.
    for label, method, figure in (("latency_ms", "latency_ms", "latency_ms"),
                                  ("latency_rel", "latency_rel", "latency_rel"),
                                  ("latency_ms of latency_rel's rounds", "latency_rel", "latency_ms")):
        twice = [spread(a1[figure], a2[figure]) for a1, a2, _ in rows[method]]
        across = [spread(a2[figure], b[figure]) for _, a2, b in rows[method]]
        values = [row[i][figure] for row in rows[method] for i in range(3)]
        unit = " ms/img" if figure == "latency_ms" else ""
        print(f"| {label} | {statistics.median(values):.4g}{unit} | {100 * statistics.median(twice):.1f}% "
              f"({100 * max(twice):.1f}%) | {100 * statistics.median(across):.1f}% ({100 * max(across):.1f}%) "
              f"| {100 * statistics.stdev(values) / statistics.mean(values):.1f}%, "
              f"{100 * (max(values) / min(values) - 1):.1f}% |")
    widths = [(m["latency_rel_hi"] - m["latency_rel_lo"]) / m["latency_rel"]
              for row in rows["latency_rel"] for m in row]
    print(f"latency_rel 95% interval width / value: median {100 * statistics.median(widths):.1f}% "
          f"over {len(widths)} measurements")


if __name__ == "__main__":
    main()
