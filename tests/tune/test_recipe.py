"""The reference trial is the PCam notes' recipe on the PCam presets, and pareto.md says how it differs."""

import warnings

import optuna
import pytest

from search_spaces import config_values
from trainables.config import TrialConfig
from tune.presets import NOTES_MIN_EPOCHS, NOTES_RECIPE, PRESETS, recipe_differences
from tune.report.summary import recipe_notes
from tune.sweep import SweepSettings, build_base, seed_config_points

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _reference(preset: str, overrides=None, space=None) -> dict:
    space = space or PRESETS[preset].space
    base = build_base(PRESETS[preset], overrides or {}, space)
    (point,) = seed_config_points(space, base)
    return {**base, **config_values(point)}


def test_pcam_a100_reference_is_the_notes_recipe():
    reference = _reference("pcam-a100")
    cfg = TrialConfig.from_flat(reference)
    assert {key: reference[key] for key in NOTES_RECIPE if key != "finetune.lora_alpha"} == {
        "finetune.method": "lora", "finetune.lora_rank": 8, "finetune.lora_mlp": True, "eval.tta": "dihedral",
        "data.image_size": 224}
    assert (cfg.finetune.lora_alpha or 2 * cfg.finetune.lora_rank) == 16
    # the space's training-time pruning ("middle") starts where the notes start it
    assert cfg.finetune.epochs >= NOTES_MIN_EPOCHS and cfg.finetune.epochs // 2 + 1 == NOTES_MIN_EPOCHS
    assert recipe_differences(reference) == []


def test_pcam_local_reference_differs_only_for_cost():
    assert recipe_differences(_reference("pcam-local")) == [
        "96 px images (the notes: 224)",
        "1-epoch fine-tune (the notes prune tokens while training from epoch 5, so train longer)"]


def test_an_override_that_moves_the_reference_off_the_recipe_is_listed():
    reference = _reference("pcam-a100", {"finetune.lora_rank": 4, "finetune.lora_mlp": False, "eval.tta": "flips"},
                           space="compress_only")
    assert recipe_differences(reference) == [
        "LoRA r = 4, alpha 8 (the notes: r = 8, alpha 16)", "LoRA on q/k/v/o only (the notes: q/k/v/o + MLP)",
        "TTA flips (the notes: TTA at evaluation; here dihedral, 8 views)"]


def test_digits_reference_lists_what_its_size_changes():
    found = recipe_differences(_reference("digits"))
    assert found[0].startswith("digits data on a digits-vit backbone") and len(found) == 5


@pytest.mark.parametrize("preset, expected", [
    ("pcam-a100", "The reference (trial 0) is the PCam notes' recipe: LoRA r = 8"),
    ("pcam-local", "The reference (trial 0) differs from the PCam notes' recipe (LoRA r = 8, alpha 16 on q/k/v/o "
                   "+ MLP, dihedral TTA, 224 px, a fine-tune of 5 epochs or more) in: 96 px images"),
])
def test_the_report_line_names_the_reference_trial_and_its_differences(preset, expected, tmp_path):
    space = PRESETS[preset].space
    base = build_base(PRESETS[preset], {}, space)
    (point,) = seed_config_points(space, base)
    settings = SweepSettings(name="r", results_dir=str(tmp_path), storage_url=None, preset=preset, space=space,
                             sampler="tpe", seed=0, objectives=(("val_auroc", "max"), ("params", "min")),
                             num_samples=1, max_concurrent=1, trial_resources={"cpu": 1}, max_failures=0, base=base)
    study = optuna.create_study(directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_auroc", "params"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 100.0], user_attrs={"config": point},
                                              system_attrs={"fixed_params": {}}))
    (line,) = recipe_notes(settings, study)
    assert line.startswith(expected)
