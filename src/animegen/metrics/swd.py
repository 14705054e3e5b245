"""Compute the sliced Wasserstein distance (SWD) between two image sets, as in ProGAN (Karras et al. 2018).

Follows ``metrics/sliced_wasserstein.py`` of progressive_growing_of_gans: each image is split into a
Laplacian pyramid (5x5 binomial filter, mirrored borders) whose levels go from full resolution down to
the last one >= 16 px; from every level 128 random 7x7 neighbourhoods per image form 147-d descriptors,
each colour channel normalised by its mean/std over all descriptors of that set and level; the
distance is the Wasserstein-1 distance of the descriptors projected on 4 x 128 random unit directions
(exact in 1-d via sorting), averaged, reported x 1e3 per level and averaged over levels.

Two deliberate differences, both harmless to the expectation: the neighbourhood positions are drawn
once and shared by both sets (common random numbers: lower variance, and ``swd(x, x) == 0`` exactly),
and sets of different sizes are compared with the exact 1-d W1 between their empirical distributions.
Like the original, per-set normalisation makes SWD blind to global colour/brightness shifts; it
measures local structure (detail at each scale).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["laplacian_pyramid", "swd", "swd_resolutions"]

_MIN_RES = 16
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_GAUSS_5x5 = torch.outer(_BINOMIAL, _BINOMIAL) / 256.0  # matches cv2.pyrDown / pyrUp


def swd_resolutions(height: int, width: int | None = None) -> list[int]:
    """Heights of the pyramid levels SWD reports for H x W images, e.g. 64 -> [64, 32, 16]."""
    res = min(height, width if width is not None else height)
    levels, size = [], height
    while res >= _MIN_RES:
        levels.append(size)
        res //= 2
        size = (size + 1) // 2  # [::2] after blurring keeps ceil(size / 2) rows
    return levels


def _blur(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    kernel = (_GAUSS_5x5 * scale).to(x.device, x.dtype).expand(x.shape[1], 1, 5, 5)
    # "reflect" is scipy.ndimage's "mirror" (edge pixel not repeated), which ProGAN uses.
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[:, :, ::2, ::2]


def _pyr_up(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    up = x.new_zeros(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])
    up[:, :, ::2, ::2] = x
    # x4 restores the energy lost to the zeros; the crop handles odd sizes.
    return _blur(up, 4.0)[:, :, :height, :width]


def laplacian_pyramid(
    images: torch.Tensor, num_levels: int, *, only: int | None = None
) -> list[torch.Tensor]:
    """Laplacian pyramid of a float N x C x H x W batch, finest level first; the last level is the blur.

    With ``only=l`` just level l is computed (returned as a one-element list), skipping coarser work.
    """
    last = num_levels - 1 if only is None else only
    gauss = [images.float()]
    for _ in range(min(last + 1, num_levels - 1)):
        gauss.append(_pyr_down(gauss[-1]))
    levels = []
    for lvl in range(num_levels) if only is None else [only]:
        if lvl == num_levels - 1:
            levels.append(gauss[lvl])
        else:
            levels.append(gauss[lvl] - _pyr_up(gauss[lvl + 1], *gauss[lvl].shape[-2:]))
    return levels


def _check(images: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ValueError(
            f"{name}: expected uint8 images N x 3 x H x W, got {getattr(images, 'dtype', type(images))}"
        )
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(
            f"{name}: expected uint8 images N x 3 x H x W with N >= 1, got shape {tuple(images.shape)}"
        )
    if min(images.shape[2:]) < _MIN_RES:
        raise ValueError(f"{name}: SWD needs images of at least {_MIN_RES} px, got {tuple(images.shape[2:])}")
    return images


def _descriptors(
    images: torch.Tensor,
    level: int,
    num_levels: int,
    ys: torch.Tensor,
    xs: torch.Tensor,
    nhood: int,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Normalised descriptors (N * P, 3 * nhood^2) of one pyramid level; ys/xs are N x P centres."""
    offsets = torch.arange(nhood, device=device) - nhood // 2
    # Filled in place rather than concatenated, so peak memory is one copy of the descriptors.
    desc = torch.empty(images.shape[0], ys.shape[1], 3, nhood * nhood, device=device)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        lap = laplacian_pyramid(batch, num_levels, only=level)[0].contiguous()
        n, c, h, w = lap.shape
        # One gather with flat indices is cheaper than 4-way advanced indexing.
        y = ys[start : start + n].to(device)
        x = xs[start : start + n].to(device)
        centre = torch.arange(n, device=device)[:, None] * (c * h * w) + y * w + x  # n x P
        window = torch.arange(c, device=device)[:, None, None] * (h * w) + offsets[:, None] * w + offsets
        desc[start : start + n] = lap.view(-1)[centre[:, :, None] + window.view(-1)].view(
            n, -1, c, nhood * nhood
        )
    desc = desc.view(-1, 3, nhood * nhood)
    std, mean = torch.std_mean(desc, dim=(0, 2), correction=0, keepdim=True)
    # A flat level (e.g. constant images) has std 0: its descriptors are all equal, so map them to 0.
    desc.sub_(mean).div_(torch.where(std > 0, std, torch.ones_like(std)))
    return desc.view(desc.shape[0], -1)


def _wasserstein1_sorted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact W1 per row between empirical 1-d distributions given as row-sorted D x n and D x m."""
    if a.shape[1] == b.shape[1]:
        return (a - b).abs().mean(dim=1)
    # Unequal sizes: W1 = integral |F_a - F_b| over the merged support (as scipy.stats.wasserstein_distance).
    merged = _sorted_rows(torch.cat([a, b], dim=1))
    widths = merged[:, 1:] - merged[:, :-1]
    knots = merged[:, :-1].contiguous()
    cdf_a = torch.searchsorted(a.contiguous(), knots, right=True).to(a.dtype) / a.shape[1]
    cdf_b = torch.searchsorted(b.contiguous(), knots, right=True).to(a.dtype) / b.shape[1]
    return ((cdf_a - cdf_b).abs() * widths).sum(dim=1)


def _sorted_rows(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "cpu":
        # numpy's sort is faster than torch.sort on CPU and allocates no index tensor
        # (docs/design-notes.md).
        arr = t.contiguous().numpy()
        arr.sort(axis=1)  # in place: t is a temporary projection
        return torch.from_numpy(arr)
    return t.sort(dim=1).values


def _sliced_w1(
    desc_a: torch.Tensor, desc_b: torch.Tensor, dirs: torch.Tensor, chunk: int = 64
) -> torch.Tensor:
    # Chunk the directions to bound the memory of the projections (N * P x chunk per set).
    out = []
    for start in range(0, dirs.shape[1], chunk):
        d = dirs[:, start : start + chunk]
        # d.T @ desc.T is born contiguous with one row per direction, the layout the sort wants.
        proj_a = _sorted_rows(d.T @ desc_a.T)
        proj_b = _sorted_rows(d.T @ desc_b.T)
        out.append(_wasserstein1_sorted(proj_a, proj_b))
    return torch.cat(out)


@torch.inference_mode()
def swd(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    nhood_size: int = 7,
    nhoods_per_image: int = 128,
    dir_repeats: int = 4,
    dirs_per_repeat: int = 128,
) -> dict:
    """SWD x 1e3 between two uint8 image sets N x 3 x H x W (same H, W; min(H, W) >= 16).

    Returns ``{"levels": {resolution: value}, "mean": value}`` with resolutions from full size down to
    16..31 px, e.g. ``{64: ..., 32: ..., 16: ...}``. Lower is better; 0 for identical sets. Deterministic
    given ``seed`` (independent of ``batch_size``). Memory: the descriptors of one pyramid level for both
    sets, 128 x 147 float32 per image (75 MB per 1000 images per set), plus the projections.
    """
    a = _check(images_a, "images_a")
    b = _check(images_b, "images_b")
    if a.shape[2:] != b.shape[2:]:
        raise ValueError(f"image sizes differ: {tuple(a.shape[2:])} vs {tuple(b.shape[2:])}")
    if nhood_size % 2 != 1 or nhood_size > _MIN_RES:
        raise ValueError(f"nhood_size must be odd and <= {_MIN_RES}, got {nhood_size}")
    dev = torch.device(device)
    height, width = a.shape[2], a.shape[3]
    resolutions = swd_resolutions(height, width)
    num_levels = len(resolutions)
    n_max = max(a.shape[0], b.shape[0])
    half = nhood_size // 2
    gen = torch.Generator().manual_seed(seed)

    levels: dict[int, float] = {}
    for lvl, res in enumerate(resolutions):
        h, w = res, -(-width // 2**lvl)
        # Same centres for image i of both sets; drawn for the larger set so results do not depend on
        # the order of the arguments' sizes.
        ys = torch.randint(half, h - half, (n_max, nhoods_per_image), generator=gen)
        xs = torch.randint(half, w - half, (n_max, nhoods_per_image), generator=gen)
        desc_a = _descriptors(a, lvl, num_levels, ys, xs, nhood_size, batch_size, dev)
        desc_b = _descriptors(b, lvl, num_levels, ys, xs, nhood_size, batch_size, dev)
        repeats = []
        for _ in range(dir_repeats):
            dirs = torch.randn(desc_a.shape[1], dirs_per_repeat, generator=gen)
            dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(dev)
            repeats.append(_sliced_w1(desc_a, desc_b, dirs).mean().item())
        del desc_a, desc_b
        levels[res] = float(np.mean(repeats)) * 1e3
    return {"levels": levels, "mean": float(np.mean(list(levels.values())))}
