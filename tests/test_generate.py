from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from animegen import deconv_grad, load_generator
from animegen.cli import main
from animegen.config import ModelConfig
from animegen.errors import CheckpointError
from animegen.generate import slerp, write_files
from animegen.networks import Generator
from animegen.sampling import CHUNK, DEFAULT_BN_MODE, bn_mode_context


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


def test_grid_and_files(run_dir, tmp_path):
    grid = tmp_path / "g.png"
    assert main(["generate", str(run_dir), "-n", "10", "--grid", str(grid), "--nrow", "5"]) == 0
    with Image.open(grid) as im:
        assert im.size == (5 * 18 + 2, 2 * 18 + 2) and im.mode == "RGB"
    out = tmp_path / "faces"
    assert main(["generate", str(run_dir), "-n", "3", "--outdir", str(out), "--seed", "4"]) == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["seed4_000000.png", "seed4_000001.png", "seed4_000002.png"]
    with Image.open(files[0]) as im:
        assert im.size == (16, 16)


def test_same_seed_same_faces_any_n(run_dir):
    g = load_generator(run_dir)
    a = g.sample(5, seed=1)
    b = g.sample(CHUNK + 7, seed=1)
    c = g.sample(5, seed=2)
    assert a.dtype == torch.uint8 and a.shape == (5, 3, 16, 16)
    assert torch.equal(a, b[:5])
    assert not torch.equal(a, c)
    assert torch.equal(g.sample(5, seed=1, bn_mode="eval"), g.sample(5, seed=1, bn_mode="eval"))
    pil = g.sample(2, seed=1, pil=True)
    assert pil[0].size == (16, 16)


def test_sampling_leaves_bn_buffers_alone(run_dir):
    g = load_generator(run_dir)
    before = {k: v.clone() for k, v in g.net.state_dict().items()}
    g.sample(10, bn_mode="batch")
    for k, v in g.net.state_dict().items():
        assert torch.equal(v, before[k]), k
    with bn_mode_context(g.net, "batch"):
        assert g.net.training
    assert not g.net.training


def test_bounded_memory_iteration(run_dir):
    g = load_generator(run_dir)
    sizes = [len(b) for b in g.iter_samples(150, seed=0)]
    assert sizes == [64, 64, 22]


def test_tutorial_pth_loads(tmp_path):
    torch.manual_seed(0)
    net = Generator(ModelConfig())  # the tutorial's 96 px seed generator, same key names
    path = tmp_path / "netG_001.pth"
    torch.save(net.state_dict(), path)
    g = load_generator(path)
    assert g.config.image_size == 96 and g.config.arch == "seed" and g.info["kind"] == "tutorial"
    assert g.sample(2).shape == (2, 3, 96, 96)
    grid = tmp_path / "t.png"
    assert main(["generate", str(path), "-n", "4", "--grid", str(grid)]) == 0 and grid.exists()


def test_shape_mismatch_is_one_line(tmp_path):
    net = Generator(ModelConfig(image_size=64, width=0.5))
    state = net.state_dict()
    state["layer2.0.weight"] = torch.zeros(1, 1, 4, 4)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"layer2.0.weight has shape \(1, 1, 4, 4\)"):
        load_generator(tmp_path / "bad.pth")


def test_interpolation(run_dir, tmp_path):
    out = tmp_path / "walk.gif"
    assert main(["interpolate", str(run_dir), "--steps", "8", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.n_frames == 8 and im.size == (16, 16)
    assert main(["interpolate", str(run_dir), "--steps", "8", "--out", str(tmp_path / "w.avi")]) == 2


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(3, 10), torch.randn(3, 10)
    path = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[2], b)
    # Halfway along the great circle the norm stays between the endpoints' (no linear-interp dip).
    mid = path[1].norm(dim=-1)
    assert torch.all(mid >= torch.minimum(a.norm(dim=-1), b.norm(dim=-1)) - 1e-4)


def test_cli_default_bn_matches_library():
    from animegen.cli import build_parser

    args = build_parser().parse_args(["generate", "x"])
    assert args.bn == DEFAULT_BN_MODE


def test_written_files_hold_the_sampled_faces_in_order(run_dir, tmp_path):
    """The PNG writers run in threads; every file must still be its own face, under its own index."""
    g = load_generator(run_dir)
    paths = write_files(g, CHUNK * 2 + 5, tmp_path / "faces", seed=3)
    faces = g.sample(CHUNK * 2 + 5, seed=3)
    assert [p.name for p in paths] == [f"seed3_{i:06d}.png" for i in range(CHUNK * 2 + 5)]
    for i in (0, CHUNK, CHUNK * 2 + 4):
        with Image.open(paths[i]) as im:
            assert torch.equal(torch.from_numpy(np.array(im)).permute(2, 0, 1), faces[i])


def test_a_failed_write_stops_generation_with_its_error(run_dir, tmp_path, monkeypatch):
    import animegen.generate as generate

    written = []

    def save_png(array, path):
        if len(written) == 70:
            raise OSError(28, "No space left on device")
        written.append(path)

    monkeypatch.setattr(generate, "save_png", save_png)
    with pytest.raises(OSError, match="No space left"):
        write_files(load_generator(run_dir), 1000, tmp_path / "faces")
    assert len(written) < 1000


def test_export_gets_the_plain_layout_and_sampling_channels_last(run_dir):
    fast = next(p for p in load_generator(run_dir).net.parameters() if p.dim() == 4)
    plain = next(p for p in load_generator(run_dir, channels_last=False).net.parameters() if p.dim() == 4)
    assert fast.is_contiguous(memory_format=torch.channels_last) and not fast.is_contiguous()
    assert plain.is_contiguous()


@pytest.mark.parametrize("capability", ["AVX2", "AVX512"])
def test_sampling_draws_the_widest_layers_as_products_only_on_avx2_kernels(run_dir, monkeypatch, capability):
    # A tiny G has no 1024-wide layer: let every transposed convolution over <= 4x4 qualify.
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS", 1)
    monkeypatch.setattr(deconv_grad, "MIN_IN_CHANNELS_FP32", 1)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    gen = load_generator(run_dir)
    swapped = [m for m in gen.net.modules() if isinstance(m, deconv_grad.MatmulGradConvTranspose2d)]
    assert bool(swapped) is (capability == "AVX2")
    exported = load_generator(run_dir, channels_last=False).net
    assert not any(isinstance(m, deconv_grad.MatmulGradConvTranspose2d) for m in exported.modules())
    assert list(gen.net.state_dict()) == list(exported.state_dict())
    z = gen.noise(8, seed=3).reshape(8, -1, 1, 1)
    with torch.no_grad():  # eval-mode G, its raw output rather than uint8 pixels
        faces, plain = gen.net(z), exported(z)
    torch.testing.assert_close(faces, plain, rtol=1e-4, atol=1e-5)
    if swapped:  # the products really drew the faces: the last bits differ from oneDNN's
        assert not torch.equal(faces, plain)
