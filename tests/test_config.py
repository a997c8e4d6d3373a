import pytest

from busseg.config import resolve_config


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nmodel:\n  width: 8\n")
    cfg = resolve_config(path, ["lr=0.01", "model.depth=3", "compile=false"])
    assert cfg.epochs == 7 and cfg.model.width == 8 and cfg.model.depth == 3
    assert cfg.lr == 0.01 and cfg.compile is False and cfg.batch_size == 8


def test_unknown_keys_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key.*epoch"):
        resolve_config(None, ["epoch=3"])
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  widht: 8\n")
    with pytest.raises(ValueError, match="model.widht"):
        resolve_config(path)


def test_bad_values(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        resolve_config(None, ["epochs=many"])
    with pytest.raises(ValueError, match="'loss'.*'dice'"):
        resolve_config(None, ["loss=dice"])
    with pytest.raises(ValueError, match="key=value"):
        resolve_config(None, ["epochs"])
    with pytest.raises(FileNotFoundError, match="config file not found"):
        resolve_config(tmp_path / "missing.yaml")


def test_shipped_configs_parse_and_busi_yaml_spells_out_the_defaults():
    from pathlib import Path

    configs = Path(__file__).parents[1] / "configs"
    assert resolve_config(configs / "busi.yaml") == resolve_config(None)
    seed = resolve_config(configs / "seed.yaml")
    assert seed.model.width == 16 and seed.model.depth == 4 and seed.model.stem_stride == 2
    assert seed.optimizer == "adam" and seed.lr == 1e-4 and seed.select == "best"
    # fine-tuning starts from the shipped weights, so it builds the shipped shape (and does not
    # read the ImageNet weights that init replaces)
    finetune = resolve_config(configs / "finetune.yaml")
    tune, shipped = finetune.model, resolve_config(configs / "all_sources_lite0.yaml").model
    assert finetune.init == "default"
    assert tune.model_copy(update={"encoder_weights": "imagenet"}) == shipped
    assert tune.encoder_weights == "random"
    assert sorted(p.name for p in configs.glob("*.yaml")) == [
        "all_sources.yaml", "all_sources_lite0.yaml", "busi.yaml", "finetune.yaml", "seed.yaml"]
    # the recipes on all three sources: 1,050 optimizer steps whatever the data's size
    for name in ("all_sources.yaml", "all_sources_lite0.yaml"):
        every = resolve_config(configs / name)
        assert every.data == ["data/busi", "data/busbra", "data/breast"]
        assert every.epochs * every.epoch_steps == 1050
    assert resolve_config(configs / "all_sources_lite0.yaml").model.name == "lite0_unet"


@pytest.mark.parametrize("override, key", [
    ("schedule=cosin", "schedule"), ("optimizer=sgd", "optimizer"), ("amp=fp16", "amp"),
    ("lr=-1", "lr"), ("epochs=0", "epochs"), ("ema=1.5", "ema"), ("device=gpu", "device"),
    ("model.stem_stride=3", "model.stem_stride"), ("augment.p=2", "augment.p"),
    ("normal_share=1", "normal_share"), ("model.norm=layer", "model.norm"),
])
def test_every_bad_value_fails_at_load_naming_its_key(override, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        resolve_config(None, [override])


def test_config_round_trips_through_its_dict():
    from busseg.config import TrainConfig, config_to_dict, from_dict

    cfg = resolve_config(None, ["model.presence_head=true", "augment.ramp=0.3", "init=default"])
    again = from_dict(TrainConfig, config_to_dict(cfg))
    assert again == cfg and again.model.presence_head and again.init == "default"


def test_the_shipped_models_recipe_is_configs_all_sources_lite0():
    """`busseg train --config configs/all_sources_lite0.yaml` trains the shipped weights' recipe."""
    from pathlib import Path

    import yaml

    from busseg.config import config_to_dict

    root = Path(__file__).parents[1]
    run = root / "src" / "busseg" / "weights" / "busseg_default_run"
    shipped = yaml.safe_load((run / "config.yaml").read_text())
    recipe = config_to_dict(resolve_config(root / "configs" / "all_sources_lite0.yaml"))
    for key in ("out", "progress"):  # where it was written, display
        shipped.pop(key, None)
    for key, value in shipped.items():
        assert recipe[key] == value, key


def test_config_has_at_most_45_leaf_keys():
    from busseg.config import config_to_dict

    def leaves(d):
        return sum(leaves(v) if isinstance(v, dict) else 1 for v in d.values())

    assert leaves(config_to_dict(resolve_config(None))) <= 45
