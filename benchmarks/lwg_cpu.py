"""lightweight-gan (lucidrains, `pip install lightweight-gan`) with its CLI defaults, on a CPU.

The package asserts CUDA at import and moves every tensor with `.cuda(rank)`. This shim loads its
source with those few lines rewritten for the CPU (each rewrite must match, so another release
fails loudly instead of running something else), then drives the package's own CLI function
`train_from_folder`, so every hyper-parameter is the CLI's default except the ones named here:

  train   image size, data loader workers 0 (the run gets one core, like animegen's), and a
          wall-clock budget: a snapshot `model_<1000 + minutes>.pt` at each mark, a log line per
          snapshot in OUT/lwg_log.jsonl; `--set KEY=VALUE` overrides one more of
          `train_from_folder`'s keywords (a Python literal: `--set fmap_max=128 attn_res_layers=[]`)
  sample  N faces from a snapshot's generator and its EMA copy, as uint8 arrays in an .npz

  python benchmarks/lwg_cpu.py train  --data DIR --out OUT --size 64 --marks 30 60 [--set K=V ...]
  python benchmarks/lwg_cpu.py sample --out OUT --size 64 --mark 30 --n 1000 --file faces.npz
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

_NO_CUDA_ASSERT = (
    "assert torch.cuda.is_available(), 'You need to have an Nvidia GPU with CUDA installed.'",
    "pass",
)
# Per module of the package: (what it says, what it says on a CPU), in import order.
CPU_REWRITES = {
    "lightweight_gan": (
        _NO_CUDA_ASSERT,
        ("torch.device(f'cuda:{self.rank}')", "torch.device('cpu')"),
        (".cuda(self.rank)", ""),
        ("self.cuda(rank)", "pass"),
        ("pin_memory = True", "pin_memory = False"),
    ),
    "diff_augment_test": (_NO_CUDA_ASSERT,),  # imported by the CLI module; its test is not used here
}
NAME = "lwg"
# train_from_folder keywords the shim sets itself, so `--set` cannot move them.
OWN_KEYWORDS = {"data", "results_dir", "models_dir", "name", "image_size", "num_workers", "new"}


def load_package() -> types.ModuleType:
    """Import lightweight_gan with CPU_REWRITES applied; returns its `cli` module."""
    spec = importlib.util.find_spec("lightweight_gan")
    if spec is None or spec.origin is None:
        sys.exit("lightweight-gan is not installed: pip install 'lightweight-gan==1.2.1'")
    pkg_dir = Path(spec.origin).parent
    pkg = types.ModuleType("lightweight_gan")
    pkg.__path__ = [str(pkg_dir)]
    sys.modules["lightweight_gan"] = pkg
    for module, rewrites in CPU_REWRITES.items():
        path = pkg_dir / f"{module}.py"
        source = path.read_text()
        for before, after in rewrites:
            if before not in source:
                sys.exit(f"{path.name} has no {before!r}: not the release this shim was written for")
            source = source.replace(before, after)
        mod = types.ModuleType(f"lightweight_gan.{module}")
        mod.__file__ = str(path)
        sys.modules[mod.__name__] = mod
        exec(compile(source, str(path), "exec"), mod.__dict__)  # noqa: S102 - the package's own code
    core = sys.modules["lightweight_gan.lightweight_gan"]
    _save_fmap_max(core.Trainer)
    for name in ("LightweightGAN", "Generator", "Discriminator", "Trainer", "NanException"):
        setattr(pkg, name, getattr(core, name))
    import lightweight_gan.cli as cli

    return cli


def _save_fmap_max(trainer: type) -> None:
    # 1.2.1 saves the architecture to .config.json without fmap_max and reads it back with a
    # default of 512, so a model trained with another fmap_max could not be loaded for sampling.
    config = trainer.config

    def config_with_fmap_max(self) -> dict:
        return {**config(self), "fmap_max": self.fmap_max}

    trainer.config = config_with_fmap_max


def parse_settings(pairs: list[str], function) -> dict[str, object]:
    """`KEY=VALUE` pairs as keyword arguments of `function`, each value a Python literal."""
    allowed = set(inspect.signature(function).parameters) - OWN_KEYWORDS
    settings = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in allowed:
            sys.exit(f"--set {pair}: expected KEY=VALUE with KEY one of {', '.join(sorted(allowed))}")
        try:
            settings[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            settings[key] = text  # a bare word, e.g. optimizer=adam
    return settings


def snapshot(mark: float) -> int:
    return 1000 + round(mark)


def train(args: argparse.Namespace) -> None:
    cli = load_package()
    out = Path(args.out)
    log = out / "lwg_log.jsonl"
    marks = sorted(args.marks)

    def run_budgeted(rank, world_size, model_args, data, *_rest) -> None:
        # In place of cli.run_training: the same Trainer and train() calls, stopped by the clock.
        model = cli.Trainer(**model_args, hparams=model_args, use_aim=False)
        model.clear()
        model.set_data_src(data)
        started = time.perf_counter()
        for mark in marks:
            while time.perf_counter() - started < mark * 60:
                cli.retry_call(model.train, tries=3, exceptions=cli.NanException)
            elapsed = time.perf_counter() - started
            model.save(snapshot(mark))
            row = {"mark_min": mark, "steps": model.steps, "seconds": round(elapsed, 1)}
            row.update(d_loss=float(model.d_loss), g_loss=float(model.g_loss))
            with log.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)

    cli.run_training = run_budgeted
    cli.train_from_folder(
        data=str(args.data),
        results_dir=str(out / "results"),
        models_dir=str(out / "models"),
        name=NAME,
        image_size=args.size,
        num_workers=0,
        new=True,
        **parse_settings(args.set, cli.train_from_folder),
    )


def sample(args: argparse.Namespace) -> None:
    cli = load_package()
    out = Path(args.out)

    @torch.no_grad()
    def write_samples(self, *_args, **_kwargs) -> str:
        # In place of Trainer.generate: N faces from fixed latents, raw G and EMA G, uint8.
        self.GAN.eval()
        g = torch.Generator().manual_seed(args.seed)
        z = torch.randn(args.n, self.GAN.latent_dim, generator=g)
        faces = {}
        for key, net in (("G", self.GAN.G), ("G_ema", self.GAN.GE)):
            chunks = [net(c).clamp(0, 1) for c in z.split(64)]
            faces[key] = (torch.cat(chunks) * 255 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
        np.savez(args.file, **faces)
        return str(args.file)

    cli.Trainer.generate = write_samples
    cli.train_from_folder(
        results_dir=str(out / "results"),
        models_dir=str(out / "models"),
        name=NAME,
        image_size=args.size,
        generate=True,
        load_from=snapshot(args.mark),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--marks", type=float, nargs="+", required=True, help="snapshot times, minutes")
    t.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="train_from_folder keywords")
    s = sub.add_parser("sample")
    s.add_argument("--mark", type=float, required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--file", type=Path, required=True)
    for q in (t, s):
        q.add_argument("--out", type=Path, required=True)
        q.add_argument("--size", type=int, default=64)
        q.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train(args) if args.cmd == "train" else sample(args)


if __name__ == "__main__":
    main()
