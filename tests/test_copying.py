"""Does it copy? Planted copies of training faces are found, scored far above the held-out
baseline and shown first on the neighbour sheet; `evaluate --holdout --neighbours` reports it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoint_checks import one_line
from conftest import write_images
from PIL import Image

from animegen.cli import main
from animegen.data.cache import load_folder
from animegen.data.split import holdout_split
from animegen.metrics import copying
from animegen.metrics.face_features import FaceFeatures, face_features


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """120 made-up 32 px faces, split as training's --holdout 0.25 splits them, with their features."""
    root = tmp_path_factory.mktemp("copying")
    write_images(root / "faces", 120, size=32, seed=5)
    images = load_folder(root / "faces", 32, cache_root=root / "cache").images
    train, held = holdout_split(len(images), 0.25)
    ruler = FaceFeatures()
    feats = face_features(torch.from_numpy(np.ascontiguousarray(images)), extractor=ruler)
    return images, feats, train, held


def test_planted_copies_score_far_above_the_held_out_baseline(faces):
    _, feats, train, held = faces
    # "Generated" faces: 10 copies of training faces and the 30 held-out faces, which are new.
    fake_f = np.concatenate([feats[train[:10]], feats[held]])
    score = copying.copy_score(fake_f, feats[train], feats[held], seed=0)
    assert score["copy_share"] >= 10 / 40  # every copy is at distance 0, under any threshold
    assert score["copy_share_heldout"] <= 0.2
    assert score["nn_median_fake"] < score["nn_median_heldout"]
    # New faces alone score like the held-out baseline, not like copies.
    new_only = copying.copy_score(feats[held], feats[train], feats[held], seed=0)
    assert new_only["copy_share"] <= 0.2


def test_neighbour_sheet_puts_the_planted_copy_first(faces, tmp_path):
    images, feats, train, held = faces
    planted = int(train[7])
    fake = torch.from_numpy(np.ascontiguousarray(images[[held[0], planted, held[1]]]))
    fake_f = feats[[held[0], planted, held[1]]]
    dist, idx = copying.nearest(fake_f, feats[train], k=3)
    assert train[idx[1, 0]] == planted and dist[1, 0] == pytest.approx(0, abs=1e-3)
    out = tmp_path / "sheet.png"
    copying.write_neighbour_sheet(fake, fake_f, images[train], feats[train], out, rows=3, k=3)
    sheet = np.asarray(Image.open(out))
    side, pad = 32, 2
    first_generated = sheet[pad : pad + side, pad : pad + side]
    first_match = sheet[pad : pad + side, pad + side + pad + side // 4 :][:, :side]
    assert np.array_equal(first_generated, images[planted].transpose(1, 2, 0))
    assert np.array_equal(first_match, images[planted].transpose(1, 2, 0))
    assert sheet.shape[0] == 3 * (side + 12 + pad) + pad


def test_evaluate_reports_copies_and_writes_the_sheet(tmp_path, capsys):
    folder = tmp_path / "faces"
    write_images(folder, 48, size=16, seed=1)
    run = tmp_path / "run"
    tiny = ["--image-size", "16", "--set", "model.width=0.125", "--batch-size", "8", "--quiet"]
    assert (
        main(
            [
                "train",
                "--data",
                str(folder),
                "--epochs",
                "1",
                "--holdout",
                "0.25",
                "--run-dir",
                str(run),
                *tiny,
            ]
        )
        == 0
    )
    sheet = tmp_path / "neighbours.png"
    argv = ["evaluate", str(run), "--data", str(folder), "--metrics", "swd", "--n", "12"]
    assert main([*argv, "--holdout", "0.25", "--neighbours", str(sheet), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "copies " in out and "held-out faces" in out and sheet.exists()
    assert main([*argv, "--neighbours", str(sheet)]) == 2
    assert "--neighbours needs --holdout" in one_line(capsys.readouterr().err)
