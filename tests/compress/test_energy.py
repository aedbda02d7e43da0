import math

import pytest
import torch

from compress import keep_count
from compress.energy import select_units


@pytest.mark.parametrize(("tau", "expected"), [(0.35, 1), (0.4, 1), (0.65, 2), (0.75, 3), (0.95, 4)])
def test_keep_count_is_smallest_prefix_reaching_tau(tau, expected):
    # energies 4, 3, 2, 1 (total 10): prefix sums 4, 7, 9, 10
    assert keep_count(torch.tensor([2.0, 4.0, 1.0, 3.0]), tau) == expected


def test_tau_one_keeps_zero_energy_units_too():
    assert keep_count(torch.tensor([5.0, 0.0, 0.0]), 1.0) == 3


def test_keep_count_is_at_least_one():
    assert keep_count(torch.tensor([1.0, 1.0, 1.0]), 1e-9) == 1


def test_keep_count_of_all_zero_energies_is_one():
    assert keep_count(torch.zeros(4), 0.5) == 1


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.2, math.nan, math.inf])
def test_keep_count_rejects_tau_outside_unit_interval(tau):
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]|tau must be a number"):
        keep_count(torch.ones(3), tau)


def test_keep_count_rejects_non_numeric_tau():
    with pytest.raises(TypeError, match="tau"):
        keep_count(torch.ones(3), "0.5")


def test_keep_count_rejects_negative_energies():
    with pytest.raises(ValueError, match="energies"):
        keep_count(torch.tensor([1.0, -1.0]), 0.5)


def test_select_units_returns_top_indices_in_ascending_order():
    assert select_units(torch.tensor([1.0, 9.0, 0.5, 7.0]), 0.9).tolist() == [1, 3]


def test_select_units_breaks_ties_by_lower_index():
    assert select_units(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5).tolist() == [0, 1]
