"""The end of a sweep: check the study, write the reports, print where everything is.

Also the final evaluation: the Pareto-optimal configs (and the reference) scored once on
the test split, in the driver's process; their training stages are cache hits.

Owns: build_reports (pareto.md's notes gathered from the passes, the dashboard note, the copy
to a URI results root), final_eval, verify, print_summary and the study's hypervolume
reference point (reference_point, for --compare). Imports tune.report.reports, tune.trials, tune.report.spectra,
tune.study and, inside functions, the passes' note helpers (tune.report.retime, tune.report.replicates,
tune.warm_start, tune.notes); none of those imports this module.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from trainables.storage import results_location
from tune.budget import budget_text, violations
from tune.callbacks import PROGRESS_FILENAME, finished_trial_ids
from tune.report.reports import hypervolume_reference_point, markdown_table, reference_row, trials_frame, write_reports
from tune.report.spectra import write_spectra
from tune.study import dashboard_command, verify_study
from tune.sweep import LADDER_ATTR, SweepSettings, is_uri
from tune.trials import front_frame, predictions_loader, trial_config, trial_temperature

log = logging.getLogger(__name__)


def reference_point(study: optuna.Study, objectives) -> dict[str, float]:
    """Return the study's hypervolume reference point in objective units: the one rule,
    tune.report.reports.hypervolume_reference_point, over its complete trials' values (by position, so a
    study without metric names works too) and their recorded params_uncompressed."""
    names = [name for name, _ in objectives]
    complete = pd.DataFrame([{"params_uncompressed": t.user_attrs.get("params_uncompressed"),
                              **dict(zip(names, t.values))}
                             for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))],
                            columns=["params_uncompressed", *names])
    return hypervolume_reference_point(complete, objectives)


def _copy_to_results(local_dir: Path, settings: SweepSettings, names) -> None:
    """Copy the named report files from the driver's folder to <results>/<sweep>/ on the object store."""
    import pyarrow.fs

    location = results_location(settings.results_dir)
    location.fs.create_dir(location.path(settings.name), recursive=True)
    for name in names:
        pyarrow.fs.copy_files(str(local_dir / name), location.path(settings.name, name),
                              source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=location.fs)


def retime_notes(retimed: pd.DataFrame | None) -> list[str]:
    """Return pareto.md's lines about the re-timing pass: where it ran, and how far a repeat moved."""
    from tune.report.retime import repeatability

    if retimed is None or retimed.empty:
        return ["No re-timing pass: latencies are the in-sweep ones, each timed once when its trial ran."]
    lines = [f"Re-timing pass: {retimed['number'].nunique()} configs (the reference twice) in "
             f"{int(retimed['rounds'].max())} interleaved rounds on {retimed['device'].iloc[0]}, at each trial's "
             f"batch ({', '.join(map(str, sorted(set(retimed['batch']))))}) and threads "
             f"({', '.join(map(str, sorted(set(retimed['threads']))))}), {float(retimed['pass_s'].iloc[0]):.1f} s."]
    moved = repeatability(retimed)
    if moved is not None:
        ref = retimed[retimed["role"] == "reference"]["latency_ms_retimed"].iloc[0]
        rep = retimed[retimed["role"] == "repeat"]["latency_ms_retimed"].iloc[0]
        lines.append(f"The reference timed twice in the pass (two builds): medians {ref:.4g} and {rep:.4g} ms, "
                     f"{100 * moved:.1f}% apart.")
    return lines


def recipe_notes(settings: SweepSettings, study: optuna.Study) -> list[str]:
    """Return pareto.md's line on the reference trial's configuration against the PCam notes' recipe."""
    from tune.presets import recipe_differences

    frame = trials_frame(study)
    reference = reference_row(frame[frame["state"] == TrialState.COMPLETE.name], settings.objectives)
    if reference is None:
        return []
    trial = study.trials[int(reference["number"])]
    try:
        differences = recipe_differences(trial_config(trial, settings.base))
    except (TypeError, ValueError) as err:  # a sweep written by another version, with keys gone since
        log.warning("cannot compare the reference with the notes' recipe: %s", err)
        return []
    recipe = "LoRA r = 8, alpha 16 on q/k/v/o + MLP, dihedral TTA, 224 px, a fine-tune of 5 epochs or more"
    if not differences:
        return [f"The reference (trial {trial.number}) is the PCam notes' recipe: {recipe}."]
    return [f"The reference (trial {trial.number}) differs from the PCam notes' recipe ({recipe}) in: "
            f"{'; '.join(differences)}."]


def ladder_notes(study: optuna.Study) -> list[str]:
    """Return pareto.md's line on the ladder's rungs (tune.sweep.LADDER_ATTR), [] for a sweep without them."""
    from search_spaces import LADDER_KEYS

    rungs = sorted((t.user_attrs[LADDER_ATTR], t) for t in study.get_trials(deepcopy=False)
                   if LADDER_ATTR in t.user_attrs)
    if not rungs:
        return []
    shown = ", ".join(f"#{t.number} at {min(t.params[k] for k in LADDER_KEYS if k in t.params):g}" for _, t in rungs)
    return [f"Ladder (--ladder {len(rungs)}): trials {shown} ran the seed configuration with its thresholds "
            "lowered together to that value (each clipped to its range), so the front spans the sizes from the "
            "first trials."]


def build_reports(settings: SweepSettings, study: optuna.Study,
                  retimed: pd.DataFrame | None = None, replicated: pd.DataFrame | None = None,
                  margins: dict[str, float] | None = None, prefer: str | None = None) -> dict[str, Path]:
    """Write the reports into the sweep's local folder (and copy them to a URI results root); put the answer
    (answer.md) into the study's optuna-dashboard note and mark the front on its trials (tune.notes).

    `retimed` is the re-timing pass's table (tune.report.retime); the front then uses its latencies.
    `replicated` is tune.report.replicates' table; pareto.md then states the seed-to-seed spread.
    `margins` and `prefer` choose the recommendation (tune.report.verdicts.recommend).
    """
    from tune.notes import publish_answer
    from tune.report.replicates import replicate_notes
    from tune.warm_start import warm_start_notes

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        written = write_reports(study, settings.local_dir, settings.objectives)
    else:
        written = write_reports(study, settings.local_dir, settings.objectives,
                                predictions=predictions_loader(settings), retimed=retimed,
                                notes=recipe_notes(settings, study)
                                + retime_notes(retimed if "latency_ms" in settings.metric_names else None)
                                + replicate_notes(replicated, settings.metric_names[0])
                                + ladder_notes(study) + warm_start_notes(study),
                                margins=margins, prefer=prefer, budget=settings.budget)
    if "answer.md" in written:
        table = pd.read_csv(written["pareto.csv"])
        publish_answer(study, written["answer.md"].read_text(encoding="utf-8"), table, settings.objectives,
                       budget_text(settings.budget) if settings.budget else None,
                       outside_budget(settings.budget, pd.read_parquet(written["trials.parquet"]), table))
    written.update(write_spectra(study, settings.local_dir, settings.objectives, settings.base,
                                 settings.results_dir))
    if is_uri(settings.results_dir):
        extra = [n for n in ("retime.csv", "replicates.csv", "replicates.md") if (settings.local_dir / n).is_file()]
        _copy_to_results(settings.local_dir, settings, [*written, *extra])
    return written


def outside_budget(budget, trials: pd.DataFrame, table: pd.DataFrame) -> dict[int, str]:
    """Return {trial number: the bounds it breaks} for the complete trials outside `budget`: front points as
    pareto.csv's `table` judges them (re-timed latency), the other trials on trials.parquet's in-sweep values."""
    if not budget:
        return {}
    front = table[table["role"] == "front"].drop_duplicates("number").set_index("number")
    rows = trials[trials["state"] == TrialState.COMPLETE.name].set_index("number")
    broken = {}
    for number, row in rows.iterrows():
        found = violations(budget, front.loc[number] if number in front.index else row)
        if found:
            broken[int(number)] = ", ".join(found)
    return broken


def verify(settings: SweepSettings, study: optuna.Study) -> dict[str, int]:
    """Return the study's trial counts by state after checking every finished Tune trial is terminal."""
    return verify_study(study, finished_trial_ids(settings.local_dir / PROGRESS_FILENAME))


def print_summary(settings: SweepSettings, study: optuna.Study, counts: dict[str, int],
                  written: dict[str, Path], storage_url: str) -> None:
    """Print the Pareto table, the trial counts, where the results are and the dashboard command."""
    print()
    print(f"sweep {settings.name!r}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    if "pareto.md" in written:
        print(Path(written["pareto.md"]).read_text(encoding="utf-8"))
    else:
        print("no complete trial: no Pareto front (see the trial errors in the progress log)")
    print(f"results:   {settings.local_dir}" + (f" (copied to {settings.sweep_dir})" if is_uri(settings.results_dir) else ""))
    for name in sorted(written):
        print(f"  {name}")
    print(f"dashboard: {dashboard_command(storage_url)}")


def final_eval(settings: SweepSettings, study: optuna.Study, *, show_progress: bool = False) -> pd.DataFrame:
    """Evaluate the reference and every Pareto-optimal config on the test split; write final_eval.csv/md.

    Each config runs through trainables.trial.evaluate_trial(split="test") in this process; the
    training stages are cache hits from the sweep, so only compression and evaluation run. With
    the trial's validation temperature (trial_temperature) the test probabilities are also scored
    after temperature scaling: test_ece_cal, test_nll_cal.
    """
    from trainables.evaluate.metrics import classification_metrics, temperature_scale
    from trainables.trial import TrialContext, evaluate_trial

    table = front_frame(settings, study)
    if table.empty:
        raise ValueError(f"sweep {settings.name!r} has no complete trial to evaluate")
    context = TrialContext(results_dir=settings.results_dir, backend="local", show_progress=show_progress,
                           max_failures=settings.max_failures)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for role, number in zip(table["role"], table["number"]):
        trial = by_number[int(number)]
        metrics, predictions = evaluate_trial(trial_config(trial, settings.base), context, split="test")
        row = {"role": role, "number": int(number)}
        row.update({f"sweep_{name}": value for name, value in zip(settings.metric_names, trial.values)})
        row.update({k: v for k, v in metrics.items() if k.startswith("test_")})
        temperature = trial_temperature(settings, trial)
        if temperature is not None:
            scaled = classification_metrics(predictions.labels, temperature_scale(predictions.probs, temperature))
            row.update({"temperature": temperature, "test_ece_cal": scaled["ece"], "test_nll_cal": scaled["nll"]})
        row.update({k: metrics[k] for k in ("params", "latency_ms", "gflops") if k in metrics})
        row.update(trial.params)
        rows.append(row)
        log.info("final eval of trial %d: test_auroc %.4f", number, metrics.get("test_auroc", math.nan))
    frame = pd.DataFrame(rows)
    out = settings.local_dir
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "final_eval.csv", index=False)
    calibration = ("test_ece/test_nll are the model's own probabilities; test_ece_cal/test_nll_cal the same "
                   "after dividing its logits by `temperature`, fitted on the validation split (what "
                   "an export applies).\n\n" if "temperature" in frame else "")
    (out / "final_eval.md").write_text(
        f"# Final evaluation of sweep {settings.name!r} on the test split\n\n"
        f"{len(frame) - 1 if (frame['role'] == 'reference').any() else len(frame)} Pareto-optimal "
        "configs and the reference, scored once on test (the search used valid).\n\n"
        + calibration + markdown_table(frame), encoding="utf-8")
    if is_uri(settings.results_dir):
        _copy_to_results(out, settings, ["final_eval.csv", "final_eval.md"])
    return frame
