"""Golden outputs of the compression functions on fixed random models.

The values in golden/compress_outputs.json were computed by this module's `compute()` on
the code before the issue-10 refactor; a refactor that moves code must reproduce them.
Regenerate only for an intended change of behaviour (`python tests/compress/test_golden.py`),
and say why in the commit.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_vit import make_classifier, make_model  # noqa: E402

from compress import (  # noqa: E402
    REGULARIZERS, CompressionPlan, TokenPlan, collect_input_stats, compress_model, load_compressed,
    lowrank_penalty, save_compressed,
)

GOLDEN = Path(__file__).parent / "golden" / "compress_outputs.json"

PLANS = {
    "heads_mlp_raw_svd": dict(tau_heads=0.9, tau_mlp=0.95, tau_svd=0.9),
    "whitened_svd": dict(tau_heads=0.95, tau_mlp=0.97, tau_svd=0.85, svd_space="whitened"),
    "svd_qkv_only": dict(tau_svd=0.8, svd_targets=("q", "k", "v")),
    "tokens": dict(tau_mlp=0.9, r_max=0.5, alpha=1.5),
    "tokens_fused": dict(r_max=0.6, alpha=1.0, fuse_pruned_tokens=True),
}


# The plans above were written when CompressionPlan also held token pruning; it is now
# compress.TokenPlan, passed to compress_model as `tokens` (field name there -> here).
TOKEN_FIELDS = {"r_max": "r_max", "alpha": "alpha", "fuse_pruned_tokens": "fuse"}


def _plans(plan: dict) -> tuple[CompressionPlan, TokenPlan | None]:
    tokens = {TOKEN_FIELDS[key]: value for key, value in plan.items() if key in TOKEN_FIELDS}
    structure = {key: value for key, value in plan.items() if key not in TOKEN_FIELDS}
    return CompressionPlan(**structure), (TokenPlan(**tokens) if tokens else None)


def _pixels(seed: int, batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _calibration() -> list[torch.Tensor]:
    return [_pixels(10 + i, 4) for i in range(2)]


def _record(model: torch.nn.Module, report) -> dict:
    with torch.no_grad():
        out = model(_pixels(1))
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return {
        "params_after": report.params_after,
        "kept": [[d.method, d.layer, d.module, d.kept, d.total, list(d.kept_indices)]
                 for d in [*report.heads, *report.mlp, *report.svd]],
        "output": [round(float(x), 7) for x in out.flatten()],
    }


def compute(tmp: Path) -> dict:
    """Return every golden case's record (outputs, parameter counts, per-layer decisions)."""
    torch.set_num_threads(1)
    results = {}
    for name, plan in PLANS.items():
        classifier = make_classifier()
        calibration = _calibration() if plan.get("svd_space") == "whitened" else None
        structure, tokens = _plans(plan)
        compressed, report = compress_model(classifier, structure, calibration, tokens=tokens)
        results[name] = _record(compressed, report)
        if name == "whitened_svd":
            save_compressed(compressed, tmp / "model")
            loaded = load_compressed(tmp / "model")
            results["whitened_svd_reloaded"] = _record(loaded, report)
    gated = make_model(gated=True)
    stats = collect_input_stats(gated, _calibration(), targets=("q", "up", "gate"))
    compressed, report = compress_model(
        gated, CompressionPlan(tau_mlp=0.9, tau_svd=0.9, svd_space="whitened", svd_targets=("q", "up", "gate")), stats
    )
    results["gated_precomputed_stats"] = _record(compressed, report)
    weight = torch.randn(24, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    factor = torch.randn(16, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    results["surrogates"] = {kind: round(float(REGULARIZERS[kind](weight, factor)), 9) for kind in sorted(REGULARIZERS)}
    stats = collect_input_stats(make_model(), _calibration())
    results["lowrank_penalty"] = round(lowrank_penalty(make_model(), "nuclear_ratio+effective_rank", stats).item(), 6)
    return results


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    threads = torch.get_num_threads()
    try:
        return compute(tmp_path_factory.mktemp("golden"))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", [*PLANS, "whitened_svd_reloaded", "gated_precomputed_stats"])
def test_compression_matches_golden(computed, case):
    golden = json.loads(GOLDEN.read_text())[case]
    got = computed[case]
    assert got["params_after"] == golden["params_after"]
    assert got["kept"] == golden["kept"]
    assert got["output"] == pytest.approx(golden["output"], rel=1e-4, abs=1e-5)


def test_surrogates_match_golden(computed):
    golden = json.loads(GOLDEN.read_text())
    assert computed["surrogates"] == pytest.approx(golden["surrogates"], rel=1e-7)
    assert computed["lowrank_penalty"] == pytest.approx(golden["lowrank_penalty"], rel=1e-5)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(compute(Path(tmp)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
