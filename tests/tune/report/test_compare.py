"""`python tune/run.py --compare A B`: hypervolumes against one reference point, checked by brute force."""

import itertools
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest

from tune.presets import DEFAULT_OBJECTIVES, get_preset
from tune.run import main
from tune.study import make_storage
from tune.sweep import SweepSettings, build_base, write_settings

optuna.logging.set_verbosity(optuna.logging.WARNING)
UNCOMPRESSED = 1000.0


def _saved_sweep(results, name, rows):
    """A finished sweep on disk (sweep.json + SQLite study) with the given (auroc, params, latency) trials."""
    preset = get_preset("digits")
    settings = SweepSettings(name=name, results_dir=str(results), storage_url=None, preset="digits",
                             space=preset.space, sampler="random", seed=0, objectives=DEFAULT_OBJECTIVES,
                             num_samples=len(rows), max_concurrent=1, trial_resources={"cpu": 1},
                             max_failures=0, base=build_base(preset, {}, preset.space))
    write_settings(settings)
    study = optuna.create_study(study_name=name, storage=make_storage(None, str(results), name),
                                directions=["maximize", "minimize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([n for n, _ in DEFAULT_OBJECTIVES])
    for values in rows:
        trial = study.ask()
        trial.set_user_attr("params_uncompressed", UNCOMPRESSED)
        study.tell(trial, list(values))
    return study


def _brute_force_hypervolume(points, reference):
    """Exact volume of the union of boxes [p, reference] by testing every cell of the coordinate grid."""
    points = np.asarray(points, dtype=float)
    axes = [np.unique(np.r_[points[:, d], reference[d]]) for d in range(len(reference))]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        low = np.array([axes[d][i] for d, i in enumerate(cell)])
        high = np.array([axes[d][i + 1] for d, i in enumerate(cell)])
        if np.any(np.all(points <= low, axis=1)):
            total += float(np.prod(high - low))
    return total


def test_compare_gives_the_brute_force_hypervolumes_with_one_reference_point(tmp_path, capsys):
    rng = np.random.default_rng(4)
    sweeps = {}
    for name, latency_scale in (("a", 2.0), ("b", 3.0)):
        rows = [(0.5 + 0.5 * rng.random(), 100 + 900 * rng.random(), latency_scale * rng.random())
                for _ in range(9)]
        _saved_sweep(tmp_path, name, rows)
        sweeps[name] = np.array(rows)
    assert main(["--results-dir", str(tmp_path), "--compare", "a", "b"]) == 0
    table = pd.read_csv(tmp_path / "compare-a-b" / "compare.csv").set_index("sweep")
    # One reference point for both: chance AUROC, the uncompressed size, the worst latency of either.
    reference = np.array([-0.5, UNCOMPRESSED, max(sweeps["a"][:, 2].max(), sweeps["b"][:, 2].max())])
    for name, rows in sweeps.items():
        losses = rows * np.array([-1.0, 1.0, 1.0])
        assert table.loc[name, "hypervolume"] == pytest.approx(_brute_force_hypervolume(losses, reference))
    assert table.loc["a", "hypervolume"] != pytest.approx(table.loc["b", "hypervolume"])
    assert (tmp_path / "compare-a-b" / "eafdiff_val_auroc__params.png").stat().st_size > 0
    assert "Hypervolume" in capsys.readouterr().out


def test_compare_refuses_a_sweep_twice(tmp_path, capsys):
    _saved_sweep(tmp_path, "a", [(0.9, 500, 1.0)])
    with pytest.raises(SystemExit):
        main(["--results-dir", str(tmp_path), "--compare", "a", "a"])
    assert "two different sweeps" in capsys.readouterr().err
