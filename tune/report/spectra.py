"""Spectrum diagnostics: normalised singular values of every SVD target, before and after prehab.

For the reference and the best-AUROC point of the front, one PNG each (as the PREHAB-SVD
utilities plot them): sigma_i / sigma_1 of W against i / rank for each target linear, one
subplot per role, one line per layer; the fine-tuned weights solid and, where the trial
ran prehab, the weights after prehab dashed. A spectrum that falls faster keeps more of
its energy in fewer directions, i.e. truncated SVD removes less.

Imports tune.report.reports (the reference row), tune.trials (each trial's config), compress and
trainables; tune.report.summary calls write_spectra.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from trainables.storage import atomic_write
from tune.report.reports import reference_row, trials_frame
from tune.trials import trial_config

log = logging.getLogger(__name__)

SPECTRUM_FILES = {"reference": "spectrum_reference.png", "best_auroc": "spectrum_best_auroc.png"}


def normalised_spectra(model: torch.nn.Module, roles) -> dict[str, dict[int, np.ndarray]]:
    """Return {role: {layer index: sigma_i / sigma_1 of that linear's dense weight W}} over the model's layers."""
    from compress.adapters import adapter_for
    from compress.linear import dense_weight

    adapter = adapter_for(model)
    spectra: dict[str, dict[int, np.ndarray]] = {}
    with torch.no_grad():
        for index, (_, layer) in enumerate(adapter.layers(model)):
            for role in roles:
                module = adapter.linear(layer, role)
                if module is None:
                    continue
                singular = torch.linalg.svdvals(dense_weight(module).double()).numpy()
                spectra.setdefault(role, {})[index] = singular / singular[0]
    return spectra


def chosen_trials(study: optuna.Study, objectives) -> dict[str, optuna.trial.FrozenTrial]:
    """Return {"reference": the reference trial, "best_auroc": the complete trial with the highest val_auroc}.

    A role is left out when the study has no such trial (no reference, no val_auroc objective).
    """
    frame = trials_frame(study)
    complete = frame[frame["state"] == TrialState.COMPLETE.name]
    if complete.empty:
        return {}
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chosen = {}
    reference = reference_row(complete, objectives)
    if reference is not None:
        chosen["reference"] = by_number[int(reference["number"])]
    if "val_auroc" in complete.columns:
        # The highest-AUROC complete trial is always on the front (nothing beats it on AUROC).
        best = complete.sort_values(["val_auroc", "number"], ascending=[False, True]).iloc[0]
        chosen["best_auroc"] = by_number[int(best["number"])]
    return chosen


def plot_spectra(before: dict, after: dict | None, title: str, path: Path) -> Path:
    """Draw the spectra (before solid, after dashed) one subplot per role; write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = list(before)
    columns = min(3, len(roles))
    rows = -(-len(roles) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), dpi=110, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, role in zip(axes.flat, roles):
        layers = sorted(before[role])
        for layer in layers:
            colour = cmap(layer / max(1, len(layers) - 1))
            values = before[role][layer]
            ax.semilogy(np.arange(1, len(values) + 1) / len(values), values, "-", c=colour, lw=1,
                        label=f"layer {layer}" if len(layers) <= 12 else None)
            if after is not None and layer in after.get(role, {}):
                values = after[role][layer]
                ax.semilogy(np.arange(1, len(values) + 1) / len(values), values, "--", c=colour, lw=1)
        ax.set_title(role)
        ax.set_xlabel("i / rank")
        ax.set_ylabel("σ_i / σ_1")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(roles):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title + ("" if after is None else " (solid: fine-tuned, dashed: after prehab)"), fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda temp: fig.savefig(temp, format="png"))
    plt.close(fig)
    return path


def write_spectra(study: optuna.Study, out_dir: Path, objectives, base: dict[str, Any],
                  results_dir: str) -> dict[str, Path]:
    """Write spectrum_reference.png and spectrum_best_auroc.png into `out_dir`; return {name: path}.

    The models come from the stage cache (the trials' model_ref_* attributes); a trial whose
    entries are gone (cache cleaned, or a sweep from before these attributes) is skipped
    with a log line, since the rest of the reports do not need them.
    """
    from compress import load_compressed
    from trainables.config import TrialConfig
    from trainables.refs import resolve_ref

    written: dict[str, Path] = {}
    computed: dict[tuple[str, tuple[str, ...]], dict] = {}

    def spectra_of(ref: str, targets) -> dict:
        # The reference and the best-AUROC trial often share a fine-tune (every trial of a
        # compress_only sweep does): its SVDs are computed once.
        key = (ref, tuple(targets))
        if key not in computed:
            computed[key] = normalised_spectra(load_compressed(str(resolve_ref(ref, results_dir))), targets)
        return computed[key]

    for role, trial in chosen_trials(study, objectives).items():
        finetuned = trial.user_attrs.get("model_ref_finetune")
        if not finetuned:
            log.info("trial %d records no model reference; no spectrum plot for the %s", trial.number, role)
            continue
        targets = TrialConfig.from_flat(trial_config(trial, base)).compress.svd_targets
        try:
            before = spectra_of(finetuned, targets)
            prehab = trial.user_attrs.get("model_ref_prehab")
            after = spectra_of(prehab, targets) if prehab else None
        except FileNotFoundError as err:
            log.info("no spectrum plot for the %s (trial %d): %s", role, trial.number, err)
            continue
        title = f"{role.replace('_', ' ')}: trial {trial.number}, normalised singular values of W"
        name = SPECTRUM_FILES[role]
        written[name] = plot_spectra(before, after, title, Path(out_dir) / name)
    return written
