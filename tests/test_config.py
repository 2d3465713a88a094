import pytest

from kx_vision import config as config_lib
from kx_vision.errors import ConfigError
from kx_vision.tasks.superres import SuperResConfig


def test_overrides_are_typed():
    config = config_lib.load(SuperResConfig, None, ["scale=4", "optimizer.learning_rate=2e-4", "data.train=a,b"])
    assert config.scale == 4 and config.optimizer.learning_rate == 2e-4 and config.data.train == ["a", "b"]
    assert config_lib.load(SuperResConfig, None, ["optimizer.clipnorm=null"]).optimizer.clipnorm is None


@pytest.mark.parametrize(
    "assignment, match",
    [
        ("data.patchsize=48", r"unknown config key 'data.patchsize' \(did you mean 'data.patch_size'\?\)"),
        ("data.patch_size=big", "'data.patch_size' expects an integer"),
        ("scale=5", r"'scale' must be one of \[2, 3, 4, 8\]"),
        ("data.augment=maybe", "'data.augment' expects true or false"),
        ("model=3", "unknown config key 'model'"),
        ("epochs", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(assignment, match):
    with pytest.raises(ConfigError, match=match):
        config_lib.load(SuperResConfig, None, [assignment])


def test_yaml_round_trip(tmp_path):
    config = config_lib.load(SuperResConfig, None, ["scale=3", "model.num_blocks=2"])
    path = tmp_path / "c.yaml"
    config_lib.dump(config, path)
    assert config_lib.load(SuperResConfig, str(path)) == config
    (tmp_path / "bad.yaml").write_text("model:\n  num_blockz: 3\n")
    with pytest.raises(ConfigError, match="model.num_blockz"):
        config_lib.load(SuperResConfig, str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(SuperResConfig, str(tmp_path / "missing.yaml"))


def test_shipped_configs_load():
    from pathlib import Path

    from kx_vision.tasks.segmentation import SegmentationConfig, check_config

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        if path.name.startswith(("camvid", "membrane")):
            check_config(config_lib.load(SegmentationConfig, str(path)))
        else:
            config_lib.load(SuperResConfig, str(path))


def test_help_lists_every_key(capsys):
    from kx_vision import train

    with pytest.raises(SystemExit):
        train.main(["superres", "--help"])
    out = capsys.readouterr().out
    for key in config_lib.flatten(SuperResConfig()):
        assert f"  {key} = " in out
