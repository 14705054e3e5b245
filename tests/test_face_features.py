"""FD-SSL's face encoder: the shipped weights load and rank damage; its trainer runs; bad files
fail in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from animegen.data.demo_faces import demo_face_array
from animegen.errors import UserError
from animegen.metrics import fid_from_features
from animegen.metrics.face_features import (
    DEFAULT_WEIGHTS,
    FaceEncoder,
    FaceFeatures,
    face_features,
    load_encoder,
    save_encoder,
)
from animegen.metrics.train_face_encoder import main as train_main
from animegen.metrics.train_face_encoder import nt_xent, random_views, train


@pytest.fixture(scope="module")
def ruler() -> FaceFeatures:
    return FaceFeatures()


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """400 procedural faces at 64 px: two disjoint sets of 200 drawn from one distribution."""
    return torch.from_numpy(demo_face_array(400, 64, seed=3))


def test_shipped_weights_are_a_trained_standardised_encoder(ruler):
    assert DEFAULT_WEIGHTS.is_file()
    assert ruler.dim == 448 and len(ruler.id) == 12
    enc = ruler.encoder
    # Standardised after training: the spreads are measured, not the initial ones.
    assert not torch.allclose(enc.feature_std, torch.ones_like(enc.feature_std))
    assert ruler.info["method"].startswith("SimCLR") and ruler.info["faces"] > 10_000


def test_features_do_not_depend_on_the_batch(ruler, faces):
    together = face_features(faces[:16], extractor=ruler)
    alone = np.concatenate([face_features(faces[i : i + 1], extractor=ruler) for i in range(16)])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    assert together.shape == (16, 448) and np.isfinite(together).all()


def test_any_image_size_is_resized(ruler, faces):
    small = TF.resize(faces[:8], [32, 32], antialias=True)
    assert face_features(small, extractor=ruler).shape == (8, 448)


def test_ranks_damage_above_the_same_distribution(ruler, faces):
    a, b = faces[:200], faces[200:]
    ref = face_features(a, extractor=ruler)

    def fd(x: torch.Tensor) -> float:
        return fid_from_features(ref, face_features(x, extractor=ruler))

    floor = fd(b)
    noisy = (b.float() + torch.randn(b.shape, generator=torch.Generator().manual_seed(0)) * 25).clamp(0, 255)
    damaged = {
        "blur": fd(TF.gaussian_blur(b, [9, 9], [2.0, 2.0])),
        "noise": fd(noisy.round().to(torch.uint8)),
        "hue": fd(TF.adjust_hue(b, 0.15)),
        "copies of 5 faces": fd(b[torch.arange(200) % 5]),
    }
    for name, value in damaged.items():
        assert value > 1.5 * floor, f"{name}: FD-SSL {value:.2f} vs floor {floor:.2f}"
    # Stronger blur is worse.
    assert fd(TF.gaussian_blur(b, [5, 5], [0.7, 0.7])) < damaged["blur"]


def test_trainer_learns_and_round_trips(tmp_path):
    images = demo_face_array(64, 64, seed=1)
    log: list[str] = []
    encoder, record = train(images, steps=4, batch=16, width=8, log=log.append)
    assert record["steps"] == 4 and np.isfinite(record["final_loss"])
    assert any("step 4/4" in line for line in log)
    path = tmp_path / "enc.safetensors"
    save_encoder(encoder, path, record)
    loaded, info = load_encoder(path)
    assert info["width"] == 8 and loaded.width == 8
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), encoder(x))


def test_trainer_refuses_wrong_size_and_tiny_sets():
    with pytest.raises(UserError, match="64 px"):
        train(demo_face_array(32, 32), steps=1, batch=8)
    with pytest.raises(UserError, match="fewer than one batch"):
        train(demo_face_array(8, 64), steps=1, batch=16)


def test_trainer_cli_writes_weights(tmp_path, capsys):
    from animegen.data.demo_faces import write_demo_folder

    folder = tmp_path / "faces"
    write_demo_folder(folder, 40, size=64)
    out = tmp_path / "w.safetensors"
    rc = train_main(
        ["--data", str(folder), "--out", str(out), "--steps", "2", "--batch", "16", "--width", "8"]
    )
    assert rc == 0 and out.is_file()
    assert FaceFeatures(out).info["data"] == "faces"
    assert train_main(["--data", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


def test_nt_xent_prefers_matching_views():
    z = torch.randn(8, 16)
    assert nt_xent(z, z, 0.2) < nt_xent(z, torch.randn(8, 16), 0.2)


def test_views_stay_in_range_and_differ():
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    g = torch.Generator().manual_seed(0)
    v1, v2 = random_views(x, g), random_views(x, g)
    assert v1.shape == x.shape and v1.min() >= -1 and v1.max() <= 1
    assert not torch.allclose(v1, v2)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all"])
def test_bad_weights_are_one_line(tmp_path, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(UserError) as e:
        FaceFeatures(bad)
    assert "\n" not in str(e.value) and "bad.safetensors" in str(e.value)
    with pytest.raises(UserError, match="not found"):
        FaceFeatures(tmp_path / "missing.safetensors")


def test_weights_of_another_shape_are_one_line(tmp_path):
    path = tmp_path / "wide.safetensors"
    save_encoder(FaceEncoder(8), path, {})
    data = path.read_bytes()
    # Claim width 16 in the metadata: the tensors no longer fit.
    path.write_bytes(data.replace(b'"width":"8"', b'"width":"16"'))
    with pytest.raises(UserError, match="not face-encoder weights"):
        FaceFeatures(path)
