from pathlib import Path

import pytest

from distgan.config import Config, ConfigError, load

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load(path, env={})
    assert isinstance(cfg, Config)
    assert Path(cfg.data.root).is_absolute()


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"mnist_paper.yaml", "mnist_paper_exact.yaml", "mnist_dcgan.yaml", "debug.yaml"} <= names


def test_overrides_are_typed(tmp_path):
    cfg = load(
        None,
        [
            "train.max_steps=200",
            "optim.lr=0.05",
            "ema.enabled=false",
            "optim.betas=[0.0,0.99]",
            "train.resume=auto",
            "wandb.name=123",
        ],
        env={},
    )
    assert cfg.train.max_steps == 200 and isinstance(cfg.train.max_steps, int)
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.ema.enabled is False
    assert cfg.optim.betas == (0.0, 0.99)
    assert cfg.train.resume == "auto"
    assert cfg.wandb.name == "123"


def test_precedence_cli_over_env_over_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("data:\n  root: from_yaml\ntrain:\n  max_steps: 7\n")
    assert load(y, env={}).data.root == str((Path.cwd() / "from_yaml").resolve())
    assert load(y, env={"DISTGAN_DATA_DIR": str(tmp_path / "env")}).data.root == str(tmp_path / "env")
    cfg = load(y, [f"data.root={tmp_path / 'cli'}"], env={"DISTGAN_DATA_DIR": str(tmp_path / "env")})
    assert cfg.data.root == str(tmp_path / "cli")
    assert cfg.train.max_steps == 7


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.max_stepz=3"], "unknown config key train.max_stepz"),
        (["trian.max_steps=3"], "unknown config section 'trian'"),
        (["train.max_steps=abc"], "train.max_steps='abc' must be an integer"),
        (["train.max_steps=0"], "train.max_steps=0 must be > 0"),
        (["optim.lr=fast"], "optim.lr='fast' must be a number"),
        (["optim.name=rmsprop"], "optim.name='rmsprop' is not allowed"),
        (["model.generator=paper_mlpp"], "model.generator='paper_mlpp' is not allowed"),
        (["loss.name=wgan"], "loss.name='wgan' is not allowed"),
        (["runtime.precision=fp8"], "runtime.precision='fp8' is not allowed"),
        (["runtime.precision=fp16", "runtime.cpu=true"], "fp16 needs a GPU"),
        (["ema.enabled=maybe"], "ema.enabled='maybe' must be a boolean"),
        (["optim.betas=[0.5]"], "optim.betas"),
        (["optim.lr_decay=0.9"], "optim.lr_decay=0.9 must be >= 1"),
        (["optim.lr=nan"], "optim.lr=nan must be a finite number"),
        (["optim.lr=inf"], "optim.lr=inf must be a finite number"),
        (["optim.betas=[0.5,nan]"], "optim.betas[1]=nan must be a finite number"),
        (["loss.r1_gamma=-inf"], "loss.r1_gamma=-inf must be a finite number"),
        (["train.allow_changed=optim.lr"], "train.allow_changed: 'optim.lr' is not an identity key"),
        (
            [
                "data.dataset=webdataset",
                "data.urls=s/train-{0..3}.tar",
                "eval.every=5",
                "eval.metrics=overfit",
                "eval.best_metric=d_overfit",
            ],
            "set data.val_urls (shards never trained on) or data.holdout_shards=N",
        ),  # fmt: skip
        (
            [
                "data.dataset=webdataset",
                "data.urls=s/train-{0..3}.tar",
                "data.image_size=64",
                "data.channels=3",
                "eval.every=5",
                "eval.metrics=stacked,fd",
            ],
            "['fd'] use an MNIST classifier and need 28x28 images; the data are 3x64x64",
        ),  # fmt: skip
        (["max_steps=3"], "must look like section.key=value"),
        (["train.max_steps"], "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=None) as e:
        load(None, overrides, env={})
    assert message in str(e.value)


def test_stacked_mnist_modes_are_read_at_any_size():
    # 'stacked' resizes samples to the classifier's 28 px (Stacked MNIST shards made at 32 or 64 px)
    for size in (32, 64):
        cfg = load(
            None,
            [
                "data.dataset=webdataset",
                "data.urls=s/train-{0..3}.tar",
                f"data.image_size={size}",
                "data.channels=3",
                "eval.every=5",
                "eval.metrics=stacked",
                "eval.best_metric=stacked_kl",
            ],
            env={},
        )
        assert cfg.eval.metrics == "stacked" and cfg.data.image_size == size


def test_bad_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad, env={})
    bad.write_text("train:\n  resume: no\n")  # YAML 1.1 reads `no` as a boolean
    with pytest.raises(ConfigError, match="quote it"):
        load(bad, env={})


def test_resolved_config_round_trips(tmp_path):
    import yaml

    from distgan.config import build

    cfg = load(None, ["train.max_steps=5", "optim.betas=[0.1,0.2]"], env={})
    again = build(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_every_float_key_refuses_nan_from_yaml(tmp_path):
    """YAML spells NaN .nan: the same refusal as on the command line, for any float key."""
    import dataclasses
    import typing

    from distgan.config import Config

    floats = [
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(Config)
        for f in dataclasses.fields(typing.get_type_hints(Config)[s.name])
        if f.type in (float, "float")
    ]
    assert len(floats) >= 10
    for key in floats:
        section, name = key.split(".")
        y = tmp_path / "c.yaml"
        y.write_text(f"{section}:\n  {name}: .nan\n")
        with pytest.raises(ConfigError, match=f"{key}=nan must be a finite number"):
            load(y, env={})


def test_wandb_mode_environment_sits_between_yaml_and_command_line(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("wandb:\n  mode: online\n")
    assert load(y, env={}).wandb.mode == "online"
    assert load(y, env={"WANDB_MODE": "offline"}).wandb.mode == "offline"
    assert load(y, env={"WANDB_MODE": "dryrun"}).wandb.mode == "offline"  # W&B's old spelling
    assert load(y, ["wandb.mode=disabled"], env={"WANDB_MODE": "offline"}).wandb.mode == "disabled"
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes' is not a W&B mode"):
        load(y, env={"WANDB_MODE": "sometimes"})


def test_config_reference_is_complete_and_docs_config_md_is_in_sync():
    """Every key has a docstring; docs/config.md is what `python -m distgan.train --help-config` prints
    (regenerate it with that command after changing a field)."""
    import dataclasses
    import typing

    from distgan.config import field_docs, reference

    for sec in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[sec.name]
        missing = [f.name for f in dataclasses.fields(cls) if not field_docs(cls).get(f.name)]
        assert not missing, f"{sec.name}: fields without a docstring: {missing}"
    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert docs.read_text() == reference() + "\n", (
        "docs/config.md is stale: python -m distgan.train --help-config > docs/config.md"
    )
