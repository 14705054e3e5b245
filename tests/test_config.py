from __future__ import annotations

import pytest

from animegen.config import Config, build_config, preset, seed_preset
from animegen.errors import UserError


def test_seed_preset_is_the_tutorial():
    c = preset("seed")
    assert (c.model.arch, c.model.image_size, c.model.z_dim, c.model.width) == ("seed", 96, 100, 1.0)
    assert c.model.d_first_bn and c.model.init == "default"
    assert (c.train.batch_size, c.train.epochs) == (8, 25)
    assert (c.optim.loss, c.optim.lr_g, c.optim.lr_d, c.optim.beta1, c.optim.beta2) == (
        "bce",
        2e-4,
        2e-4,
        0.5,
        0.999,
    )
    assert c.data.hflip is False and c.train.amp == "off"


def test_file_then_sets_then_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "seed"\n[train]\nbatch_size = 32\nepochs = 3\n[data]\nhflip = true\n')
    c = build_config(config_file=toml, sets=["train.epochs=5"], overrides={"train.batch_size": 16})
    assert c.preset == "seed" and c.train.epochs == 5 and c.train.batch_size == 16 and c.data.hflip is True
    yaml = tmp_path / "c.yaml"
    yaml.write_text("model:\n  image_size: 64\n  width: 0.5\n")
    c = build_config("dcgan64", yaml)
    assert c.model.image_size == 64 and c.model.width == 0.5 and c.model.arch == "dcgan64"


def test_round_trip():
    c = build_config("demo", sets=["optim.lr_g=1e-3", "data.limit=10"])
    again = Config.from_dict(c.to_dict())
    assert again == c


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["train.batch_size=abc"], "train.batch_size"),
        (["nope.x=1"], "unknown section"),
        (["train.nope=1"], "unknown key"),
        (["model.image_size=100"], "image size 100"),
        (["optim.loss=wgan"], "optim.loss"),
        (["train.epochs"], "section.key=value"),
    ],
)
def test_bad_values_are_one_line_errors(sets, needle):
    with pytest.raises(UserError) as e:
        build_config("default", sets=sets)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="bad.yaml: not a valid config file"):
        build_config(config_file=bad)
    with pytest.raises(UserError, match="unknown preset"):
        build_config("fancy")


def test_a_saved_config_without_a_newer_key_takes_its_presets_value():
    saved = seed_preset().to_dict()
    del saved["train"]["fused_adam"]  # a run saved before the key existed
    assert Config.from_dict(saved).train.fused_adam == "off"
    saved = Config().to_dict()
    del saved["train"]["fused_adam"]
    assert Config.from_dict(saved).train.fused_adam == "auto"
