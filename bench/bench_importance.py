"""Issue 34: head / MLP-unit importance (energy, taylor, activation) x allocation (per_layer, global).

    python bench/bench_importance.py [--results-dir /tmp/bench-importance] [--taus 0.2,0.3,...,1.0]
                                     [--parts digits,vits] [--vits-batch 8]

digits: the digits preset's fine-tuned model (the seed trial's pretrain and fine-tune stages, from
        the stage cache in --results-dir), heads + MLP units only (no SVD, no token pruning), one-shot,
        no recovery. For each importance x allocation, every (tau_heads, tau_mlp) of the grid is
        compressed and scored on the validation split by the sweep's own evaluation path. Printed:
        the hypervolume of each front (AUROC x params, reference point AUROC 0.5 and the
        uncompressed parameter count, as a fraction of that box; moocore), each front's points
        with the paired bootstrap AUROC difference against the energy / per_layer front point of
        the smallest size at least as large (same images), the scoring seconds (once per model,
        the cached importance stage: remove <results-dir>/cache/importance to time it again) and the
        median compress_model seconds per grid point. Every grid point is written to
        <results-dir>/importance_grid.csv. "with tau >= 0.5 only": the front of the range the
        space searched before issue 34.
vits:   scoring seconds of taylor and activation on a DINOv3 ViT-S/16 (random init, shaped spectra
        as in bench_compress.py) with a linear head, one calibration batch of --vits-batch 224 px images.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from compress import CompressionPlan, compress_model, count_params, load_compressed, load_unit_scores, unit_scores
from compress.classifier import ViTClassifier
from search_spaces import SEED_CONFIG
from trainables import stages
from trainables.config import TrialConfig
from trainables.evaluate.bootstrap import paired_deltas
from trainables.evaluate.evaluation import split_evaluation
from trainables.refs import resolve_ref
from trainables.stages import TrialContext, TrialRun
from tune.report.reports import front_hypervolume, pareto_front

OBJECTIVES = [("val_auroc", "max"), ("params", "min")]
COMBINATIONS = [(importance, allocation) for importance in ("energy", "taylor", "activation")
                for allocation in ("per_layer", "global")]
REFERENCE = ("energy", "per_layer")


def fine_tuned(ctx: TrialContext, importance: str) -> tuple[TrialRun, torch.nn.Module, object]:
    """Return (the run of the seed trial with `importance`, its fine-tuned model, its cached scores or None)."""
    flat = {**SEED_CONFIG, "compress.importance": importance, "compress.tau_heads": 0.5}
    run = TrialRun.start(TrialConfig.from_flat(flat), ctx)
    tuned = stages.FINETUNE.run(run, stages.PRETRAIN.run(run))
    model = load_compressed(resolve_ref(tuned.ref, ctx.results_dir)).eval()
    scores = None
    if importance != "energy":
        scores = load_unit_scores(str(resolve_ref(stages.IMPORTANCE.run(run, tuned).ref, ctx.results_dir)))
    return run, model, scores


def digits(ctx: TrialContext, taus: list[float]) -> None:
    """Print each combination's front, hypervolume and paired AUROC differences (see module docstring)."""
    torch.set_num_threads(1)
    rows, probs = [], {}
    score_s, compress_s = {}, {}
    for importance, allocation in COMBINATIONS:
        run, model, scores = fine_tuned(ctx, importance)
        if run.hits.get("importance") is False:
            score_s[importance] = f"{run.seconds['importance']:.2f}"
        score_s.setdefault(importance, "cached" if importance != "energy" else "-")
        uncompressed = count_params(model)
        seconds = []
        for tau_heads, tau_mlp in itertools.product(taus, taus):
            plan = CompressionPlan(tau_heads=tau_heads, tau_mlp=tau_mlp, importance=importance, allocation=allocation)
            started = time.perf_counter()
            compressed, report = compress_model(model, plan, scores=scores)
            seconds.append(time.perf_counter() - started)
            metrics, predictions = split_evaluation(compressed, run.cfg, run.data_root, "valid", torch.device("cpu"))
            key = (importance, allocation, tau_heads, tau_mlp)
            probs[key] = predictions
            rows.append({"importance": importance, "allocation": allocation, "tau_heads": tau_heads,
                         "tau_mlp": tau_mlp, "val_auroc": metrics["val_auroc"], "params": report.params_after,
                         "heads": "/".join(str(d.kept) for d in report.heads),
                         "units": sum(d.kept for d in report.mlp)})
        compress_s[(importance, allocation)] = statistics.median(seconds)
    table = pd.DataFrame(rows)
    table.to_csv(Path(ctx.results_dir) / "importance_grid.csv", index=False)
    box = 0.5 * uncompressed
    reference_point = {"val_auroc": 0.5, "params": uncompressed}

    def front_of(group: pd.DataFrame) -> pd.DataFrame:
        # Grid points that prune alike give equal rows; one of each is enough.
        return pareto_front(group, OBJECTIVES).drop_duplicates(["params", "val_auroc"]).sort_values("params")

    groups = dict(list(table.groupby(["importance", "allocation"], sort=False)))
    fronts = {combo: front_of(group) for combo, group in groups.items()}
    reference_front = fronts[REFERENCE]
    print(f"uncompressed parameters {uncompressed:,}; grid tau_heads x tau_mlp over {taus}; "
          f"{len(table)} compressed models")
    print("\n| importance | allocation | hypervolume (fraction of box) | with tau >= 0.5 only | front points | "
          "scoring s | compress s/model |")
    print("|---|---|---|---|---|---|---|")
    for combo, front in fronts.items():
        group = groups[combo]
        upper = group[(group["tau_heads"] >= 0.5) & (group["tau_mlp"] >= 0.5)]
        volume = front_hypervolume(front, OBJECTIVES, reference_point) / box
        upper_volume = front_hypervolume(front_of(upper), OBJECTIVES, reference_point) / box
        print(f"| {combo[0]} | {combo[1]} | {volume:.3f} | {upper_volume:.3f} | {len(front)} | {score_s[combo[0]]} | "
              f"{compress_s[combo]:.3f} |")
    for (importance, allocation), front in fronts.items():
        if (importance, allocation) == REFERENCE:
            continue
        print(f"\n{importance} / {allocation}: front vs the energy / per_layer front point of the smallest "
              "size at least as large (paired stratified bootstrap, 1000 resamples, 95%)")
        print("| tau_heads | tau_mlp | heads kept | MLP units | params | AUROC | ref params | ref AUROC | "
              "delta AUROC [95%] |")
        print("|---|---|---|---|---|---|---|---|---|")
        for row in front.itertuples():
            larger = reference_front[reference_front["params"] >= row.params]
            if larger.empty:
                continue
            ref = larger.iloc[0]
            ours = probs[(importance, allocation, row.tau_heads, row.tau_mlp)]
            theirs = probs[(*REFERENCE, ref.tau_heads, ref.tau_mlp)]
            delta = paired_deltas(ours.labels, ours.probs, theirs.probs)
            print(f"| {row.tau_heads:.1f} | {row.tau_mlp:.1f} | {row.heads} | {row.units} | {row.params:,} | "
                  f"{row.val_auroc:.4f} | {int(ref.params):,} | {ref.val_auroc:.4f} | "
                  f"{delta['delta_auroc']:+.4f} [{delta['delta_auroc_lo']:+.4f}, {delta['delta_auroc_hi']:+.4f}] |")
    print("\nenergy / per_layer front:")
    print(reference_front[["tau_heads", "tau_mlp", "heads", "units", "params", "val_auroc"]].to_string(index=False))


def vits(batch_size: int) -> None:
    """Print taylor and activation scoring seconds on a ViT-S/16 classifier (random init, shaped spectra)."""
    from bench_compress import shaped_vit_s

    torch.set_num_threads(1)
    model = ViTClassifier(shaped_vit_s(), num_classes=2).eval()
    generator = torch.Generator().manual_seed(1)
    batch = (torch.randn(batch_size, 3, 224, 224, generator=generator),
             torch.randint(0, 2, (batch_size,), generator=generator))
    for importance in ("taylor", "activation"):
        started = time.perf_counter()
        scores = unit_scores(model, importance, [batch])
        seconds = time.perf_counter() - started
        plan = CompressionPlan(tau_heads=0.5, tau_mlp=0.5, importance=importance, allocation="global")
        started = time.perf_counter()
        _, report = compress_model(model, plan, scores=scores)
        print(f"ViT-S/16 {importance}: scoring {seconds:.2f} s (batch {batch_size} at 224 px, 1 thread); "
              f"compress_model (tau 0.5 / 0.5, global) {time.perf_counter() - started:.2f} s; "
              f"params {report.params_before:,} -> {report.params_after:,}; "
              f"finite scores: {all(bool(torch.isfinite(s).all()) for s in scores.heads + scores.mlp)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default="/tmp/bench-importance")
    parser.add_argument("--taus", default=",".join(f"{t / 10:.1f}" for t in range(2, 11)))
    parser.add_argument("--parts", default="digits,vits")
    parser.add_argument("--vits-batch", type=int, default=8)
    args = parser.parse_args()
    parts = args.parts.split(",")
    if "digits" in parts:
        taus = [float(value) for value in args.taus.split(",")]
        digits(TrialContext(results_dir=args.results_dir, show_progress=False), taus)
    if "vits" in parts:
        vits(args.vits_batch)


if __name__ == "__main__":
    main()
