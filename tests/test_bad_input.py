"""Bad input gets one clear message naming the file, key or value and what was expected, and
leaves no partial result behind.

CLI cases run `python tune/run.py` in subprocesses (all started at once by one fixture, so
their imports overlap on the shared cores); each fails before Ray starts. Library cases call
HDF5ImageDataset, check_dataset, check_local_checkpoint, load_compressed and run_trial.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _ray_guard import ray_tmp_dir
from transformers import BertConfig, DINOv3ViTConfig, DINOv3ViTModel, ViTConfig

from compress import load_compressed, prune_mlp_neurons, save_compressed
from trainables.data.datasets import PCAM_PREFIX, DataFileError, HDF5ImageDataset, check_dataset, split_path
from trainables.model import build_classifier, check_local_checkpoint
from trainables.trial import TrialContext, run_trial
from tune.sweep import SweepSettings, write_settings

REPO = Path(__file__).resolve().parents[1]
RUN = str(REPO / "tune" / "run.py")
SPLITS = ("train", "valid", "test")


# ------------------------------------------------------------------ data in PCam's layout

def write_pcam(root: Path, n: int = 8, size: int = 8) -> Path:
    """Write a valid tiny PCam folder (three splits, binary labels) and return it."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_array(root, split, "x", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
        write_array(root, split, "y", (np.arange(n) % 2).astype(np.uint8).reshape(-1, 1, 1, 1))
    return root


def write_array(root: Path, split: str, kind: str, array: np.ndarray) -> Path:
    path = split_path(root, split, kind, PCAM_PREFIX)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x" if kind == "x" else "y", data=array)
    return path


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Each fault: (split file it breaks, how, what the message must say besides the file name).
DATA_FAULTS = {
    "truncated": ("train_x", lambda root: truncate(split_path(root, "train", "x")), "truncated or corrupt"),
    "corrupt": ("valid_y", lambda root: split_path(root, "valid", "y").write_bytes(os.urandom(4096)),
                "truncated or corrupt"),
    "wrong_shape": ("train_x", lambda root: write_array(root, "train", "x", np.zeros((8, 8, 8), np.uint8)),
                    "(N, H, W, 3)"),
    "wrong_dtype": ("valid_x", lambda root: write_array(root, "valid", "x", np.zeros((8, 8, 8, 3), np.float32)),
                    "uint8"),
    "label_outside_classes": ("test_y", lambda root: write_array(
        root, "test", "y", np.full((8, 1, 1, 1), 2, np.uint8)), "labels must be in {0..1}"),
    "empty_split": ("valid_x", lambda root: (
        write_array(root, "valid", "x", np.zeros((0, 8, 8, 3), np.uint8)),
        write_array(root, "valid", "y", np.zeros((0, 1, 1, 1), np.uint8))), "empty"),
    "missing_split": ("test_x", lambda root: split_path(root, "test", "x").unlink(), "not found"),
}


def broken_pcam(root: Path, fault: str) -> Path:
    write_pcam(root)
    DATA_FAULTS[fault][1](root)
    return root


# ------------------------------------------------------------------ CLI cases, run at once

def _weights_dir(path: Path, config) -> str:
    config.save_pretrained(path)
    return str(path)


def _taken_sweep(results: Path, name: str) -> None:
    """Write the sweep.json of another sweep (seed_only space) called `name` under `results`."""
    write_settings(SweepSettings(
        name=name, results_dir=str(results), storage_url=None, preset="digits", space="seed_only",
        sampler="random", seed=3, objectives=(("val_auroc", "max"), ("params", "min")), num_samples=5,
        max_concurrent=1, trial_resources={"cpu": 1}, max_failures=0, base={}))


def _cli_cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Return {case: (extra CLI args, fragments the error line must contain)}; writes their inputs."""
    vit = _weights_dir(tmp / "vit", ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64))
    bert = _weights_dir(tmp / "bert", BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=64))
    not_a_dir = tmp / "plain-file"
    not_a_dir.write_text("x")
    cases = {}
    for fault, (file, _, says) in DATA_FAULTS.items():
        root = broken_pcam(tmp / f"pcam-{fault}", fault)
        pcam = ["--set", "data.dataset=pcam", "--set", f"data.root={root}"]
        cases[f"debug_pcam_{fault}"] = (["--debug-trial", *pcam], [f"{PCAM_PREFIX}_split_{file}.h5", says])
    root = broken_pcam(tmp / "pcam-sweep", "truncated")
    cases["sweep_pcam_present_but_truncated"] = (
        ["--name", "s", "--set", "data.dataset=pcam", "--set", f"data.root={root}"],
        [f"{PCAM_PREFIX}_split_train_x.h5", "truncated"])
    cases["debug_pcam_absent"] = (["--debug-trial", "--set", "data.dataset=pcam", "--set",
                                   f"data.root={tmp / 'no-pcam-here'}"], ["not found", "download"])
    cases.update({
        "sweep_weights_not_dinov3": (["--name", "s", "--set", f"model.weights={vit}", "--set", "pretrain.epochs=0"],
                                     [vit, "'vit'", "dinov3_vit"]),
        "debug_weights_not_dinov3": (["--debug-trial", "--set", f"model.weights={bert}"],
                                     [bert, "'bert'", "dinov3_vit"]),
        "debug_weights_missing": (["--debug-trial", "--set", f"model.weights={tmp / 'no-weights'}"],
                                  ["model.weights", "no-weights"]),
        "tau_heads_zero": (["--set", "compress.tau_heads=0"], ["compress.tau_heads", "(0, 1]", "0.0"]),
        "tau_svd_above_one": (["--space", "seed_only", "--set", "compress.tau_svd=1.5"],
                              ["compress.tau_svd", "(0, 1]", "1.5"]),
        "r_max_one": (["--space", "seed_only", "--set", "tokens.r_max=1"], ["tokens.r_max", "[0, 1)", "1"]),
        "r_max_debug": (["--debug-trial", "--set", "tokens.r_max=-0.2"], ["tokens.r_max", "[0, 1)", "-0.2"]),
        "alpha_zero": (["--space", "seed_only", "--set", "tokens.alpha=0"], ["tokens.alpha", "> 0", "0"]),
        "tau_not_a_number": (["--set", "compress.tau_mlp=high"], ["compress.tau_mlp", "float", "'high'"]),
        "unknown_importance": (["--space", "seed_only", "--set", "compress.importance=magnitude"],
                               ["compress.importance", "energy, taylor, activation", "'magnitude'"]),
        "unknown_allocation": (["--space", "seed_only", "--set", "compress.allocation=uniform"],
                               ["compress.allocation", "per_layer, global", "'uniform'"]),
        "unknown_set_key": (["--set", "compress.tau_mpl=0.9"], ["'compress.tau_mpl'", "compress.tau_mlp"]),
        "unknown_space": (["--space", "pareto_magic"], ["'pareto_magic'", "compress_only", "default"]),
        "quant_int8_on_cuda": (["--space", "seed_only", "--set", "run.device=cuda", "--set", "compress.quant=int8"],
                               ["compress.quant=int8", "cuda", "run.device=cpu"]),
        "quant_bf16_on_onnxruntime": (["--space", "seed_only", "--set", "compress.quant=bf16", "--set",
                                       "eval.runtime=onnxruntime"], ["compress.quant=bf16", "eval.runtime=onnxruntime"]),
        "quant_unknown_debug": (["--debug-trial", "--set", "compress.quant=int4"],
                                ["compress.quant", "none, int8, bf16", "'int4'"]),
        "postgres_unreachable": (["--name", "s", "--storage", "postgresql://vs:hunter2@127.0.0.1:1/x"],
                                 ["cannot open Optuna storage", "127.0.0.1:1"]),
        "sqlite_dir_missing": (["--name", "s", "--storage", f"sqlite:///{tmp}/no/such/dir/optuna.db"],
                               ["cannot open Optuna storage", "no/such/dir"]),
        "results_dir_under_a_file": (["--name", "s", "--results-dir", str(not_a_dir / "results")],
                                     [str(not_a_dir)]),
        "name_holds_another_sweep": (["--name", "taken"], ["'taken'", "--resume taken"]),
        "name_folder_not_empty": (["--name", "leftover"], ["leftover", "not empty"]),
    })
    return cases


def _prepare_results(case: str, results: Path) -> None:
    if case == "name_holds_another_sweep":
        _taken_sweep(results, "taken")
    elif case == "name_folder_not_empty":
        (results / "leftover").mkdir(parents=True)
        (results / "leftover" / "pareto.md").write_text("| an old report |\n")


def _snapshot(root: Path) -> dict[str, bytes]:
    """Return {relative path: bytes} of every file under root (empty when root is absent)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


CLI_CASES = [
    *(f"debug_pcam_{fault}" for fault in DATA_FAULTS), "sweep_pcam_present_but_truncated",
    "debug_pcam_absent", "sweep_weights_not_dinov3", "debug_weights_not_dinov3", "debug_weights_missing",
    "tau_heads_zero", "tau_svd_above_one", "r_max_one", "r_max_debug", "alpha_zero", "tau_not_a_number",
    "unknown_importance", "unknown_allocation", "unknown_set_key", "unknown_space", "quant_int8_on_cuda",
    "quant_bf16_on_onnxruntime", "quant_unknown_debug", "postgres_unreachable",
    "sqlite_dir_missing", "results_dir_under_a_file", "name_holds_another_sweep", "name_folder_not_empty",
]

# A few cases go through `python tune/run.py` itself (imports, exit status, nothing but one
# line on stderr); every case also runs through main() in this process, which is fast.
SUBPROCESS_CASES = ["debug_pcam_truncated", "sweep_weights_not_dinov3", "postgres_unreachable",
                    "results_dir_under_a_file", "name_holds_another_sweep"]


@pytest.fixture(scope="module")
def case_inputs(tmp_path_factory):
    """Return (folder, {case: (CLI args, fragments)}) with every case's input files written."""
    tmp = tmp_path_factory.mktemp("cli")
    cases = _cli_cases(tmp)
    assert sorted(cases) == sorted(CLI_CASES)
    return tmp, cases


def _args(case: str, results: Path, cases) -> list[str]:
    args = cases[case][0]
    return args if "--results-dir" in args else ["--results-dir", str(results), *args]


@pytest.fixture(scope="module")
def scripted(case_inputs):
    """Run SUBPROCESS_CASES through the script concurrently; return {case: (code, stderr, results, before)}."""
    tmp, cases = case_inputs
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": str(ray_tmp_dir("vsb"))}
    env.pop("RAY_ADDRESS", None)
    procs = {}
    for case in SUBPROCESS_CASES:
        results = tmp / "script-results" / case
        _prepare_results(case, results)
        procs[case] = (subprocess.Popen([sys.executable, RUN, *_args(case, results, cases)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        cwd=tmp, env=env), results, _snapshot(results))
    outcomes = {}
    for case, (proc, results, before) in procs.items():
        _, err = proc.communicate(timeout=300)
        outcomes[case] = (proc.returncode, err, results, before)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    return outcomes


def _in_process(case, case_inputs, tmp_path, capsys, monkeypatch):
    """Run one case through tune.run.main(); return (exit code, stderr, results dir, files before)."""
    import trainables.trial
    from tune.run import main
    import tune.sweep

    def never(*args, **kwargs):
        raise AssertionError(f"{case}: the bad input was not caught before the run started")

    monkeypatch.setattr(tune.sweep, "run_tune", never)
    monkeypatch.setattr(trainables.trial, "run_trial", never)
    monkeypatch.chdir(tmp_path)
    tmp, cases = case_inputs
    results = tmp_path / "results"
    _prepare_results(case, results)
    before = _snapshot(results)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(_args(case, results, cases))
    return info.value.code, capsys.readouterr().err, results, before


def _assert_one_error_line(code, err, fragments):
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], err[-2000:]
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_input_exits_2_with_one_error_line_naming_it(case, case_inputs, tmp_path, capsys, monkeypatch):
    code, err, _, _ = _in_process(case, case_inputs, tmp_path, capsys, monkeypatch)
    _assert_one_error_line(code, err, case_inputs[1][case][1])


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_input_leaves_the_results_folder_as_it_was(case, case_inputs, tmp_path, capsys, monkeypatch):
    _, _, results, before = _in_process(case, case_inputs, tmp_path, capsys, monkeypatch)
    assert _snapshot(results) == before


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
@pytest.mark.slow
def test_script_exits_2_with_one_error_line_and_no_traceback(case, scripted, case_inputs):
    code, err, _, _ = scripted[case]
    _assert_one_error_line(code, err, case_inputs[1][case][1])


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
@pytest.mark.slow
def test_script_leaves_the_results_folder_as_it_was(case, scripted):
    _, _, results, before = scripted[case]
    assert _snapshot(results) == before


@pytest.mark.slow
def test_storage_error_hides_the_password(scripted):
    assert "hunter2" not in scripted["postgres_unreachable"][1]


# ------------------------------------------------------------------ library: data

@pytest.mark.parametrize("fault", sorted(DATA_FAULTS))
def test_check_dataset_names_the_broken_file(tmp_path, fault):
    file, _, says = DATA_FAULTS[fault]
    with pytest.raises((DataFileError, FileNotFoundError, ValueError)) as info:
        check_dataset(broken_pcam(tmp_path / "pcam", fault))
    assert f"{PCAM_PREFIX}_split_{file}.h5" in str(info.value) and says in str(info.value)


def test_check_dataset_counts_every_split_of_a_good_folder(tmp_path):
    assert check_dataset(write_pcam(tmp_path / "pcam", n=6)) == {"train": 6, "valid": 6, "test": 6}


def test_float_labels_are_rejected_naming_the_file(tmp_path):
    root = write_pcam(tmp_path / "pcam")
    path = write_array(root, "train", "y", np.full((8, 1, 1, 1), 0.5, np.float32))
    with pytest.raises(DataFileError, match=rf"{path.name}.*integers"):
        HDF5ImageDataset(root, "train")


def test_digit_labels_outside_zero_to_nine_are_rejected(tmp_path):
    root = write_pcam(tmp_path / "pcam")
    path = write_array(root, "train", "digit", np.full((8, 1, 1, 1), 12, np.uint8))
    with pytest.raises(DataFileError, match=rf"{path.name}: labels must be in \{{0\.\.9\}}.*\[12\]"):
        HDF5ImageDataset(root, "train", labels="digit")


def test_run_trial_on_corrupt_data_fails_before_any_stage_is_cached(tmp_path):
    root = broken_pcam(tmp_path / "pcam", "corrupt")
    results = tmp_path / "results"
    flat = {"data.dataset": "pcam", "data.root": str(root), "pretrain.epochs": 1}
    with pytest.raises(DataFileError, match="split_valid_y.h5"):
        run_trial(flat, TrialContext(results_dir=str(results), show_progress=False))
    assert not list(results.glob("cache/*/*"))


# ------------------------------------------------------------------ library: weights

def test_vit_checkpoint_is_refused_by_build_classifier(tmp_path):
    weights = _weights_dir(tmp_path / "vit", ViTConfig(hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match=r"'vit' checkpoint, not a DINOv3 ViT"):
        build_classifier("digits-vit", 2, weights)


def test_local_checkpoint_check_reads_the_config_only(tmp_path):
    # config.json alone (no weights file) is enough to accept a matching architecture.
    DINOv3ViTModel(DINOv3ViTConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=4,
                                   num_attention_heads=4, patch_size=4, image_size=32)).config.save_pretrained(tmp_path)
    assert check_local_checkpoint(tmp_path, "digits-vit") is True


def test_local_checkpoint_check_names_a_mismatched_architecture(tmp_path):
    DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, patch_size=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"hidden_size=64.*'digits-vit' expects 96"):
        check_local_checkpoint(tmp_path, "digits-vit")


def test_local_checkpoint_check_skips_a_hub_id():
    assert check_local_checkpoint("facebook/dinov3-vits16-pretrain-lvd1689m", "dinov3-vits16") is False


# ------------------------------------------------------------------ library: compressed checkpoints

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny classifier and a saved MLP-pruned one (different structure)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("compressed")
    plain = save_compressed(build_classifier("digits-vit", 2), root / "plain")
    pruned = build_classifier("digits-vit", 2)
    prune_mlp_neurons(pruned, 0.5)
    return plain, save_compressed(pruned, root / "pruned")


def _tampered(saved, tmp_path, edit) -> Path:
    directory = Path(shutil.copytree(saved[0], tmp_path / "m"))
    structure = json.loads((directory / "structure.json").read_text())
    edit(structure)
    (directory / "structure.json").write_text(json.dumps(structure))
    return directory


STRUCTURE_TAMPERING = {
    "fewer_heads": (lambda s: s["layers"][1].update(num_heads=2), r"model\.safetensors does not match.*layer\.1"),
    "wider_mlp": (lambda s: s["layers"][0].update(mlp_width=999), r"layers\[0\]\.mlp_width must be an integer in \[1, 384\], got 999"),
    "unknown_low_rank_role": (lambda s: s["layers"][0].update(low_rank={"qkv": 4}), r"layers\[0\]\.low_rank: unknown role 'qkv'"),
    "layer_dropped": (lambda s: s["layers"].pop(), r"records 3 layers but the rebuilt model has 4"),
    "family": (lambda s: s.update(family="llama"), r"structure\.json: unknown model family 'llama'"),
    "key_missing": (lambda s: s.pop("layers"), r"structure\.json lacks key\(s\) \['layers'\]"),
    "wrapper_class": (lambda s: s["wrapper"].update({"class": "os:system"}), r"wrapper class 'os:system' is not an nn\.Module"),
    "format_version": (lambda s: s.update(format_version=99), r"format_version 99 is not 1"),
}


@pytest.mark.parametrize("tampering", sorted(STRUCTURE_TAMPERING))
def test_tampered_structure_names_the_file_and_what_is_wrong(saved, tmp_path, tampering):
    edit, message = STRUCTURE_TAMPERING[tampering]
    with pytest.raises(ValueError, match=message):
        load_compressed(_tampered(saved, tmp_path, edit))


def test_structure_that_is_not_json_names_the_file(saved, tmp_path):
    directory = Path(shutil.copytree(saved[0], tmp_path / "m"))
    (directory / "structure.json").write_text('{"format_version": 1,')
    with pytest.raises(ValueError, match=r"structure\.json is not valid JSON"):
        load_compressed(directory)


def test_swapped_weights_file_names_the_mismatched_tensor(saved, tmp_path):
    directory = Path(shutil.copytree(saved[0], tmp_path / "m"))
    shutil.copy(saved[1] / "model.safetensors", directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors does not match.*mlp\.up_proj\.weight has shape"):
        load_compressed(directory)


def test_truncated_weights_file_is_named(saved, tmp_path):
    directory = Path(shutil.copytree(saved[0], tmp_path / "m"))
    truncate(directory / "model.safetensors")
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors.*truncated"):
        load_compressed(directory)
