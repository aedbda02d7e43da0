"""The model-independent half of token pruning: how many patch tokens each layer keeps, and
which (top CLS attention, optionally fused into one weighted-mean token), on plain tensors."""

import math

import torch


def keep_schedule(num_patches: int, num_layers: int, r_max: float, alpha: float) -> list[int]:
    """Return the patch tokens kept at each layer's output.

    n_l = max(1, floor(n_{l-1} * (1 - r_max * ((l + 1) / L) ** alpha))), l = 0..L-1,
    n_{-1} = num_patches (the token-pruning notes' rule: 144 patches, 8 layers, r_max 0.6,
    alpha 2 keep 142, 136, 124, 105, 80, 53, 28, 11).
    """
    check_positive_int("num_patches", num_patches)
    check_positive_int("num_layers", num_layers)
    check_r_max(r_max)
    check_alpha(alpha)
    schedule = []
    kept = num_patches
    for layer in range(num_layers):
        keep_fraction = 1.0 - r_max * ((layer + 1) / num_layers) ** alpha
        # The 1e-9 keeps a product that is an integer in exact arithmetic (1000 * 0.93 evaluates to
        # 929.9999999999999) from flooring one below it.
        kept = max(1, math.floor(kept * keep_fraction + 1e-9))
        schedule.append(kept)
    return schedule


def keep_top(hidden_states, cls_attention, num_prefix, num_keep):
    """Return (prefix + the `num_keep` top-attention patches in their original order, kept patch indices)."""
    batch_size = hidden_states.shape[0]
    keep_index = cls_attention[:, num_prefix:].topk(num_keep, dim=-1, sorted=False).indices.sort(dim=-1).values
    # One row selection over prefix + kept patches instead of slicing and concatenating.
    prefix_index = torch.arange(num_prefix, device=keep_index.device).expand(batch_size, -1)
    token_index = torch.cat((prefix_index, keep_index + num_prefix), dim=1)
    return select_tokens(hidden_states, token_index), keep_index


def select_tokens(hidden_states: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
    """Return hidden_states[b, token_index[b]] for every b, shaped (batch, k, width).

    Whole rows are copied with one index_select over the flattened batch; `gather` with an
    index expanded over the width reads one index per element and is ~10x slower on CPU.
    """
    batch_size, num_tokens, width = hidden_states.shape
    offsets = torch.arange(batch_size, device=token_index.device).unsqueeze(1) * num_tokens
    rows = (token_index + offsets).reshape(-1)
    return hidden_states.reshape(-1, width).index_select(0, rows).view(batch_size, -1, width)


def keep_and_fuse(hidden_states, cls_attention, num_prefix, has_fused, num_keep):
    """Return (prefix + fused token + kept patches, kept patch indices); the fused token is the weighted mean.

    fused = sum_i a_i x_i / sum_i a_i over dropped patches i (and the previous fused token),
    a_i being the CLS attention averaged over heads.
    """
    patch_start = num_prefix + int(has_fused)
    patch_scores = cls_attention[:, patch_start:]
    order = patch_scores.argsort(dim=-1, descending=True)
    keep_index = order[:, :num_keep].sort(dim=-1).values
    drop_index = order[:, num_keep:]

    drop_weights = patch_scores.gather(1, drop_index).unsqueeze(-1)
    dropped = select_tokens(hidden_states, drop_index + patch_start)
    fused_sum = (drop_weights * dropped).sum(dim=1)
    weight_sum = drop_weights.sum(dim=1)
    if has_fused:
        previous_weight = cls_attention[:, num_prefix : num_prefix + 1]
        fused_sum = fused_sum + previous_weight * hidden_states[:, num_prefix]
        weight_sum = weight_sum + previous_weight
    fused = (fused_sum / weight_sum).unsqueeze(1)

    kept = select_tokens(hidden_states, keep_index + patch_start)
    return torch.cat((hidden_states[:, :num_prefix], fused, kept), dim=1), keep_index


def gather_rotary(table: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
    """Return the rotary rows of the kept patches, shaped (batch, 1, kept, head_dim) to broadcast over heads."""
    if table.dim() == 2:
        return table[keep_index].unsqueeze(1)
    head_dim = table.shape[-1]
    return table.gather(2, keep_index[:, None, :, None].expand(-1, 1, -1, head_dim))


def check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value}")


def check_r_max(r_max) -> None:
    if isinstance(r_max, bool) or not isinstance(r_max, (int, float)):
        raise TypeError(f"r_max must be a number in [0, 1), got {type(r_max).__name__}")
    if not (math.isfinite(r_max) and 0.0 <= r_max < 1.0):
        raise ValueError(f"r_max must be in [0, 1), got {r_max}")


def check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number > 0, got {type(alpha).__name__}")
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
