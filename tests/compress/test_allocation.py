import pytest
import torch
from tiny_vit import make_model

from compress import allocate, prune_attention_heads, prune_mlp_neurons
from compress.energy import select_units


def _random_layers(seed: int, layers: int = 6, width: int = 12) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Layers of very different spread: some concentrated (a few large scores), some flat.
    return [torch.rand(width, generator=generator, dtype=torch.float64) ** (1 + 8 * (index % 3))
            for index in range(layers)]


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("seed", range(5))
def test_global_never_empties_a_layer_and_reaches_tau_of_the_total(tau, seed):
    scores = _random_layers(seed)
    kept = allocate(scores, tau, "global")
    shares = [layer / layer.sum() for layer in scores]
    held = sum(share[index].sum() for share, index in zip(shares, kept))
    assert all(index.numel() >= 1 for index in kept)
    assert held >= tau * sum(share.sum() for share in shares) - 1e-12


@pytest.mark.parametrize("tau", [0.7, 0.9, 0.95])
def test_global_keeps_the_fewest_units_that_reach_tau(tau):
    scores = _random_layers(7)
    kept = allocate(scores, tau, "global")
    shares = [layer / layer.sum() for layer in scores]
    # Dropping the kept unit of smallest share (not a layer's last one) falls below tau.
    candidates = [(share[index].min(), layer) for layer, (share, index) in enumerate(zip(shares, kept))
                  if index.numel() > 1]
    assert candidates, "tau should need more than each layer's top unit"
    smallest, _ = min(candidates)
    held = sum(share[index].sum() for share, index in zip(shares, kept))
    assert held - smallest < tau * len(scores)


def test_global_gives_concentrated_layers_fewer_units():
    flat = torch.ones(8, dtype=torch.float64)
    peaked = torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    kept = allocate([flat, peaked], 0.5, "global")
    assert kept[1].numel() < kept[0].numel()


def test_a_layer_of_zero_scores_keeps_one_unit():
    kept = allocate([torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0])], 0.9, "global")
    assert kept[0].tolist() == [0]


def test_global_tau_one_keeps_every_unit():
    scores = [torch.tensor([0.0, 1.0, 2.0]), torch.tensor([5.0, 0.0])]
    assert [index.tolist() for index in allocate(scores, 1.0, "global")] == [[0, 1, 2], [0, 1]]


def test_per_layer_is_the_notes_selection():
    scores = _random_layers(3)
    for got, layer in zip(allocate(scores, 0.6, "per_layer"), scores):
        assert torch.equal(got, select_units(layer, 0.6))


def test_unknown_allocation_names_the_argument():
    with pytest.raises(ValueError, match="allocation must be one of per_layer, global"):
        allocate([torch.ones(2)], 0.5, "uniform")


@pytest.mark.parametrize("prune", [prune_attention_heads, prune_mlp_neurons])
def test_smallest_tau_keeps_a_unit_in_every_layer(prune):
    for allocation in ("per_layer", "global"):
        decisions = prune(make_model(), 0.01, allocation=allocation)
        assert all(decision.kept >= 1 for decision in decisions)
        assert any(decision.applied for decision in decisions)


def test_scores_of_the_wrong_size_name_the_layer():
    with pytest.raises(ValueError, match=r"scores\[1\] must hold 4 values"):
        prune_attention_heads(make_model(), 0.5, scores=[torch.ones(4), torch.ones(3)])
