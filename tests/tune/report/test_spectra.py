"""Spectrum diagnostics written with the sweep's reports."""

import numpy as np
import optuna
import pytest
import torch

from compress import save_compressed
from trainables.model import build_classifier
from tune.report.spectra import SPECTRUM_FILES, normalised_spectra, write_spectra

OBJECTIVES = [("val_auroc", "max"), ("params", "min")]


def test_spectra_are_normalised_per_target_and_layer():
    torch.manual_seed(0)
    model = build_classifier("digits-vit", 2)
    spectra = normalised_spectra(model, ["q", "down"])
    layers = len(model.backbone.model.layer)
    assert set(spectra) == {"q", "down"} and len(spectra["q"]) == layers
    for values in spectra["down"].values():
        assert values[0] == 1.0 and np.all(np.diff(values) <= 1e-12) and values[-1] > 0


def _add_trial(study, values, attrs, enqueue=False):
    if enqueue:
        study.enqueue_trial({})
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, values)


@pytest.mark.slow  # renders two figures of every SVD target in every layer
def test_reference_and_best_auroc_plots_are_written(tmp_path, monkeypatch):
    import tune.report.spectra

    computed = []

    def counted(model, roles):
        computed.append(model)
        return normalised_spectra(model, roles)

    monkeypatch.setattr(tune.report.spectra, "normalised_spectra", counted)
    torch.manual_seed(0)
    finetuned, after = tmp_path / "finetuned", tmp_path / "prehab"
    save_compressed(build_classifier("digits-vit", 2), finetuned)
    save_compressed(build_classifier("digits-vit", 2), after)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_auroc", "params"])
    _add_trial(study, [0.8, 100], {"model_ref_finetune": str(finetuned)}, enqueue=True)
    _add_trial(study, [0.9, 120], {"model_ref_finetune": str(finetuned), "model_ref_prehab": str(after)})
    _add_trial(study, [0.7, 50], {})  # no model reference: not chosen, nothing to plot
    written = write_spectra(study, tmp_path / "out", OBJECTIVES, base={}, results_dir=str(tmp_path))
    assert set(written) == set(SPECTRUM_FILES.values())
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*.tmp"))
    # Both chosen trials share one fine-tune: its spectra are computed once, the prehab model's once.
    assert len(computed) == 2


def test_missing_cache_entry_skips_the_plot(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_auroc", "params"])
    _add_trial(study, [0.8, 100], {"model_ref_finetune": "cache:finetune/0123abcd/model"}, enqueue=True)
    assert write_spectra(study, tmp_path, OBJECTIVES, base={}, results_dir=str(tmp_path)) == {}
