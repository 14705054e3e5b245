"""ONNX and TorchScript export: same images as PyTorch for any batch size, runnable without torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from conftest import TINY, write_images

from animegen import export, generate, load_generator, sampling
from animegen.cli import main
from animegen.cli.tools import add_export_parser
from animegen.errors import UserError
from animegen.sampling import bn_mode_context

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    write_images(root / "faces", 16)
    run = root / "run"
    assert main(["train", "--data", str(root / "faces"), "--epochs", "1", "--run-dir", str(run), *TINY]) == 0
    return load_generator(run)


def _reference(gen, z: torch.Tensor, bn_mode: str) -> np.ndarray:
    with bn_mode_context(gen.net, bn_mode), torch.no_grad():
        return gen.net(z).numpy()


def _latents(gen, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, gen.z_dim, generator=torch.Generator().manual_seed(seed))


def _cli(argv: list[str]) -> int:
    # The subcommand as `animegen` registers it, without depending on cli.py's wiring.
    parser = argparse.ArgumentParser(prog="animegen")
    add_export_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_defaults_agree_with_generate():
    assert export.DEFAULT_BN_MODE == generate.DEFAULT_BN_MODE
    assert export.BN_MODES == sampling.BN_MODES


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
def test_onnx_matches_pytorch_for_any_batch(gen, tmp_path, bn_mode):
    path = export.export_onnx(gen, tmp_path / "g.onnx", bn_mode=bn_mode)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape, inp.type) == ("z", ["batch", gen.z_dim], "tensor(float)")
    assert (out.name, out.shape[1:]) == ("images", [3, 16, 16]) and isinstance(out.shape[0], str)
    z5 = _latents(gen, 5)
    results = {}
    for batch in (1, 5):
        z = z5[:batch]
        (got,) = session.run(["images"], {"z": z.numpy()})
        assert got.shape == (batch, 3, 16, 16) and got.dtype == np.float32
        assert got.min() >= -1 and got.max() <= 1
        np.testing.assert_allclose(got, _reference(gen, z, bn_mode), atol=1e-4, rtol=0)
        results[batch] = got
    # The BatchNorm mode really is baked in: with batch statistics a face depends on its batch.
    same = np.allclose(results[1][0], results[5][0], atol=1e-5)
    assert same == (bn_mode == "eval")


def test_onnx_file_format(gen, tmp_path):
    path = export.export_onnx(gen, tmp_path / "sub" / "g.onnx", opset=13)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}[""] == 13
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["animegen.z_dim"] == str(gen.z_dim) and meta["animegen.bn_mode"] == export.DEFAULT_BN_MODE
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["g.onnx"]  # no temp file left
    default = onnx.load(str(export.export_onnx(gen, tmp_path / "d.onnx")))
    assert {o.domain: o.version for o in default.opset_import}[""] == export.DEFAULT_OPSET == 17


def test_onnx_runs_with_onnxruntime_alone(gen, tmp_path):
    export.export_onnx(gen, tmp_path / "g.onnx")
    z = _latents(gen, 3, seed=1)
    np.save(tmp_path / "z.npy", z.numpy())
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession("g.onnx", providers=["CPUExecutionProvider"])
        out = session.run(None, {"z": np.load("z.npy")})[0]
        np.save("out.npy", out)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "animegen"))))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    np.testing.assert_allclose(
        np.load(tmp_path / "out.npy"), _reference(gen, z, export.DEFAULT_BN_MODE), atol=1e-4
    )


@pytest.mark.parametrize("bn_mode", ["batch", "eval"])
def test_torchscript_matches_pytorch(gen, tmp_path, bn_mode):
    path = export.export_torchscript(gen, tmp_path / "g.pt", bn_mode=bn_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated in torch 2.14
        module = torch.jit.load(str(path))
    for batch in (1, 5):
        z = _latents(gen, batch, seed=2)
        with torch.no_grad():
            got = module(z).numpy()
        assert got.shape == (batch, 3, 16, 16)
        np.testing.assert_allclose(got, _reference(gen, z, bn_mode), atol=1e-4, rtol=0)


def test_export_leaves_the_generator_alone(gen, tmp_path):
    before = {k: v.clone() for k, v in gen.net.state_dict().items()}
    export.export_onnx(gen, tmp_path / "g.onnx")
    export.export_torchscript(gen, tmp_path / "g.pt")
    assert not gen.net.training
    for k, v in gen.net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_cli_writes_both(gen, tmp_path, capsys):
    onnx_path, ts_path = tmp_path / "g.onnx", tmp_path / "g.pt"
    argv = ["export", str(gen.source), "--onnx", str(onnx_path), "--torchscript", str(ts_path)]
    assert _cli([*argv, "--bn", "eval", "--opset", "18"]) == 0
    out = capsys.readouterr().out
    assert onnx_path.stat().st_size > 0 and ts_path.stat().st_size > 0
    assert "opset 18" in out and "BatchNorm eval" in out and "checked with onnxruntime" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "nothing to write"),
        (["--onnx", "g.onnx", "--opset", "7"], "--opset must be between"),
    ],
)
def test_cli_errors(gen, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        _cli(["export", str(gen.source), *argv])


def test_bad_bn_mode(gen, tmp_path):
    with pytest.raises(UserError, match="--bn must be one of"):
        export.export_onnx(gen, tmp_path / "g.onnx", bn_mode="train")


def test_help_has_an_example():
    parser = argparse.ArgumentParser(prog="animegen")
    p = add_export_parser(parser.add_subparsers())
    assert p.epilog.startswith("example")
    assert "--onnx" in p.format_help()


def test_module_import_is_light():
    # Registering the subcommand must not import torch (animegen --help stays fast).
    code = (
        "import sys, animegen.export, animegen.serve; print('torch' in sys.modules, 'fastapi' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "False"], proc.stderr
