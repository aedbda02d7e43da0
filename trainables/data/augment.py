"""Image transforms written in torch: dihedral symmetries and histology training augmentation.

Images are float tensors in [0, 1], channels first (C, H, W) or batched (N, C, H, W); every
function acts on the last three dimensions, so both layouts work.
"""

from __future__ import annotations

import math

import torch

DIHEDRAL_COUNT = 8

# RGB -> YIQ (NTSC). Hue is the angle of the (I, Q) chroma vector, so a hue shift is a
# rotation in that plane: a 3x3 linear map, cheaper than a round trip through HSV.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_LUMA_WEIGHTS = _RGB_TO_YIQ[0]


def dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """Return `images` under dihedral symmetry `index` in 0..7: rotate by 90*(index % 4) degrees, then flip left-right if index >= 4."""
    if not 0 <= index < DIHEDRAL_COUNT:
        raise ValueError(f"dihedral index must be in 0..7, got {index}")
    out = torch.rot90(images, k=index % 4, dims=(-2, -1))
    if index >= 4:
        out = torch.flip(out, dims=(-1,))
    return out


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _grey(image: torch.Tensor) -> torch.Tensor:
    weights = _LUMA_WEIGHTS.to(image.dtype).view(3, 1, 1)
    return (image * weights).sum(dim=-3, keepdim=True)


def adjust_hue(image: torch.Tensor, shift_turns: float) -> torch.Tensor:
    """Return `image` (RGB, [0, 1]) with hue rotated by `shift_turns` of a full turn (rotation of the YIQ chroma plane), clamped to [0, 1]."""
    angle = 2.0 * math.pi * shift_turns
    cos, sin = math.cos(angle), math.sin(angle)
    rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = (_YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ).to(image.dtype)
    out = torch.einsum("ij,...jhw->...ihw", matrix, image)
    return out.clamp_(0.0, 1.0)


def color_jitter(
    image: torch.Tensor,
    *,
    brightness: float = 0.1,
    contrast: float = 0.1,
    saturation: float = 0.1,
    hue: float = 0.02,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return one RGB image (3, H, W) in [0, 1] with random brightness, contrast, saturation (factors in [1-s, 1+s]) and hue shift (in [-hue, hue] turns)."""
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5] turns, got {hue}")
    out = image
    if brightness:
        out = out * _uniform(1 - brightness, 1 + brightness, generator)
    if contrast:
        mean_luma = _grey(out).mean()
        out = mean_luma + (out - mean_luma) * _uniform(1 - contrast, 1 + contrast, generator)
    if saturation:
        grey = _grey(out)
        out = grey + (out - grey) * _uniform(1 - saturation, 1 + saturation, generator)
    out = out.clamp(0.0, 1.0)
    if hue:
        out = adjust_hue(out, _uniform(-hue, hue, generator))
    return out


def histology_augment(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return one RGB image (3, H, W) in [0, 1] under a random dihedral symmetry and modest colour jitter.

    Tissue patches have no canonical orientation, so all eight flips/rotations are label
    preserving; stain colour varies between labs, hence the (small) jitter.
    """
    index = int(torch.randint(DIHEDRAL_COUNT, (), generator=generator))
    if image.shape[-1] != image.shape[-2] and index % 2 == 1:
        index -= 1  # a quarter turn would change a non-square image's shape
    return color_jitter(dihedral(image, index), generator=generator)


def jitter_batch(images: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                 saturation: torch.Tensor, hue_turns: torch.Tensor) -> torch.Tensor:
    """Return a batch (N, 3, H, W) in [0, 1] under per-image colour factors (each shape (N,)),
    the steps of `color_jitter` in its order: brightness, contrast, saturation, clamp, hue, clamp.

    The three steps before the clamp are affine in the pixel, so they run as one 3x3 map per
    image: with w the luma weights (summing to 1) and m = b * mean(w.x) the brightened mean
    luma, x -> c*b*(s*I + (1 - s)*1 w^T) x + m*(1 - c). Hue is a second 3x3 map.
    """
    n, _, height, width = images.shape
    device, dtype = images.device, images.dtype
    flat = images.reshape(n, 3, height * width)
    weights = _LUMA_WEIGHTS.to(device=device, dtype=dtype)
    mean_luma = brightness * torch.einsum("c,ncp->n", weights, flat) / (height * width)
    eye = torch.eye(3, device=device, dtype=dtype)
    luma_map = torch.ones(3, 1, device=device, dtype=dtype) @ weights.view(1, 3)
    sat = saturation.to(dtype).view(-1, 1, 1)
    linear = (contrast * brightness).to(dtype).view(-1, 1, 1) * (sat * eye + (1 - sat) * luma_map)
    offset = (mean_luma * (1 - contrast)).to(dtype).view(-1, 1, 1).expand(n, 3, 1)
    out = torch.baddbmm(offset, linear, flat).clamp_(0.0, 1.0)
    angle = 2.0 * math.pi * hue_turns.to(torch.float32)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = torch.zeros(n, 3, 3, device=device)
    rotate[:, 0, 0] = 1.0
    rotate[:, 1, 1], rotate[:, 1, 2], rotate[:, 2, 1], rotate[:, 2, 2] = cos, -sin, sin, cos
    matrix = (_YIQ_TO_RGB.to(device) @ rotate @ _RGB_TO_YIQ.to(device)).to(dtype)
    return torch.bmm(matrix, out).clamp_(0.0, 1.0).view(n, 3, height, width)


def histology_augment_batch(images: torch.Tensor, generator: torch.Generator | None = None, *,
                            brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1,
                            hue: float = 0.02) -> torch.Tensor:
    """Return a batch (N, 3, H, W) in [0, 1], each image under its own random dihedral symmetry and
    colour jitter: `histology_augment` for a whole batch at once, on the batch's device."""
    n, device = len(images), images.device
    draw = torch.rand(5, n, generator=generator, device=generator.device if generator else "cpu").to(device)
    index = (draw[0] * DIHEDRAL_COUNT).long().clamp_(max=DIHEDRAL_COUNT - 1)
    if images.shape[-1] != images.shape[-2]:
        index -= index % 2  # quarter turns would change a non-square image's shape
    out = torch.empty_like(images)
    for k in range(DIHEDRAL_COUNT):
        chosen = (index == k).nonzero().flatten()
        if len(chosen):
            out[chosen] = dihedral(images[chosen], k)

    def factor(row: torch.Tensor, spread: float) -> torch.Tensor:
        return 1.0 - spread + 2.0 * spread * row

    return jitter_batch(out, factor(draw[1], brightness), factor(draw[2], contrast),
                        factor(draw[3], saturation), (2.0 * draw[4] - 1.0) * hue)
