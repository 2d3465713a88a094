import dataclasses
import typing
from pathlib import Path

import pytest

from kx_vision import config as config_lib
from kx_vision.errors import ConfigError
from kx_vision.tasks import segmentation, style, superres
from kx_vision.tasks.superres import SuperResConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TASKS = {"superres": superres, "segmentation": segmentation, "style": style}


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
        ("model=3", r"config key 'model' is a section, not a value: set one of its keys \(model.num_blocks, "),
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


def _task_of(path):
    return segmentation if path.name.startswith(("camvid", "membrane")) else superres


def test_defaults_and_shipped_configs_are_valid():
    for task in TASKS.values():  # every default passes its own declared ranges
        assert config_lib.load(task.Config) == task.Config()
        config_lib.validate(task.Config())
    superres.Task(superres.Config()).check_config()
    segmentation.Task(segmentation.Config()).check_config()
    configs = sorted(CONFIGS.glob("**/*.yaml"))  # configs/presets/ too
    assert len(configs) >= 8
    for path in configs:
        _task_of(path).Task(config_lib.load(_task_of(path).Config, str(path))).check_config()


def test_help_lists_every_key(capsys):
    from kx_vision import train

    with pytest.raises(SystemExit):
        train.main(["superres", "--help"])
    out = capsys.readouterr().out
    for key in config_lib.flatten(SuperResConfig()):
        assert f"  {key} = " in out


# --- Numeric ranges (issue 17, item 14) ---

def _numeric_fields(cls, prefix=""):
    """`(dotted key, field, type)` of every int / float / list-of-number field, however optional."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, f"{prefix}{f.name}.")
            continue
        inner = config_lib._strip_optional(tp)
        item = typing.get_args(inner)[0] if typing.get_origin(inner) is list else inner
        if item in (int, float):
            yield f"{prefix}{f.name}", f, tp


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_numeric_option_declares_a_range(task):
    keys = []
    for key, f, _ in _numeric_fields(TASKS[task].Config):
        keys.append(key)
        assert f.metadata.get("bounds") or f.metadata.get("choices"), f"{task}: '{key}' has no declared range"
    assert {"epochs", "seed", "optimizer.learning_rate", "optimizer.warmup_steps"} <= set(keys)


@pytest.mark.parametrize(
    "task, assignment, message",
    [
        ("superres", "epochs=0", "config key 'epochs' must be >= 1, got 0"),
        ("superres", "epochs=-1", "config key 'epochs' must be >= 1, got -1"),
        ("superres", "steps_per_epoch=0", "config key 'steps_per_epoch' must be >= 1, got 0"),
        ("superres", "steps_per_epoch=-1", "config key 'steps_per_epoch' must be >= 1, got -1"),
        ("superres", "data.batch_size=0", "config key 'data.batch_size' must be >= 1, got 0"),
        ("superres", "data.patch_size=0", "config key 'data.patch_size' must be >= 1, got 0"),
        ("superres", "model.num_filters=-8", "config key 'model.num_filters' must be >= 1, got -8"),
        ("superres", "model.num_blocks=-1", "config key 'model.num_blocks' must be >= 1, got -1"),
        ("superres", "model.residual_scale=0", "config key 'model.residual_scale' must be > 0, got 0"),
        ("superres", "freeze_transferred_epochs=-1", "config key 'freeze_transferred_epochs' must be >= 0, got -1"),
        ("superres", "loss.pixel_weight=-0.5", "config key 'loss.pixel_weight' must be >= 0, got -0.5"),
        ("superres", "optimizer.learning_rate=-1e-3", "config key 'optimizer.learning_rate' must be > 0, got -0.001"),
        ("superres", "optimizer.learning_rate=0", "config key 'optimizer.learning_rate' must be > 0, got 0"),
        ("superres", "optimizer.learning_rate=nan", "config key 'optimizer.learning_rate' expects a finite number, "
                                                    "got 'nan'"),
        ("superres", "optimizer.warmup_steps=-10", "config key 'optimizer.warmup_steps' must be >= 0, got -10"),
        ("superres", "optimizer.pct_start=1", "config key 'optimizer.pct_start' must be in (0, 1), got 1"),
        ("superres", "optimizer.clipnorm=0", "config key 'optimizer.clipnorm' must be > 0, got 0"),
        ("superres", "time_budget=-5", "config key 'time_budget' must be > 0, got -5"),
        ("superres", "seed=-1", "config key 'seed' must be in [0, 4294967295], got -1"),
        ("segmentation", "data.val_split=2", "config key 'data.val_split' must be in (0, 1), got 2"),
        ("segmentation", "data.val_split=0", "config key 'data.val_split' must be in (0, 1), got 0"),
        ("segmentation", "data.image_size=16,128",
         "config key 'data.image_size' must have every item >= 32, got [16, 128]"),
        ("segmentation", "data.batch_size=0", "config key 'data.batch_size' must be >= 1, got 0"),
        ("segmentation", "num_classes=0", "config key 'num_classes' must be in [1, 256], got 0"),
        ("segmentation", "ignore_class=-1", "config key 'ignore_class' must be in [0, 255], got -1"),
        ("segmentation", "data.mask_divisor=0", "config key 'data.mask_divisor' must be in [1, 255], got 0"),
        ("segmentation", "loss.dice_weight=-1", "config key 'loss.dice_weight' must be >= 0, got -1"),
        ("segmentation", "model.max_filters=0", "config key 'model.max_filters' must be >= 1, got 0"),
        ("segmentation", "freeze_backbone_epochs=-2", "config key 'freeze_backbone_epochs' must be >= 0, got -2"),
        ("style", "model.num_blocks=-1", "config key 'model.num_blocks' must be >= 1, got -1"),
        ("style", "data.crop_size=0", "config key 'data.crop_size' must be >= 1, got 0"),
        ("style", "loss.style_weight=-1", "config key 'loss.style_weight' must be >= 0, got -1"),
        ("style", "loss.style_size=8", "config key 'loss.style_size' must be >= 16, got 8"),
        ("style", "epochs=0", "config key 'epochs' must be >= 1, got 0"),
    ],
)
def test_out_of_range_values_name_key_value_and_range(task, assignment, message):
    with pytest.raises(ConfigError) as info:
        config_lib.load(TASKS[task].Config, None, [assignment])
    assert str(info.value) == message


def test_bounds_themselves_are_accepted():
    config = config_lib.load(superres.Config, None, [
        "optimizer.warmup_steps=0", "freeze_transferred_epochs=0", "loss.pixel_weight=0", "seed=4294967295",
        "epochs=1", "steps_per_epoch=1", "optimizer.pct_start=0.999", "time_budget=0.5"])
    assert (config.optimizer.warmup_steps, config.seed, config.epochs, config.time_budget) == (0, 2**32 - 1, 1, 0.5)
    config = config_lib.load(segmentation.Config, None, [
        "data.image_size=32,33", "data.val_split=0.01", "num_classes=1", "ignore_class=null", "data.mask_divisor=255",
        "ignore_class=255", "num_classes=2"])
    assert config.data.image_size == [32, 33] and config.ignore_class == 255


def test_ranges_hold_in_a_yaml_file_and_name_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  val_split: 1.0\n")
    with pytest.raises(ConfigError, match=rf"^config file {path}: config key 'data.val_split' must be in \(0, 1\)"):
        config_lib.load(segmentation.Config, str(path))


def test_check_config_validates_configs_built_in_python():
    with pytest.raises(ConfigError, match="config key 'epochs' must be >= 1, got 0"):
        superres.Task(superres.Config(epochs=0)).check_config()
    bad = segmentation.Config(data=segmentation.DataConfig(val_split=2.0))
    with pytest.raises(ConfigError, match=r"'data.val_split' must be in \(0, 1\), got 2"):
        segmentation.Task(bad).check_config()
    with pytest.raises(ConfigError, match="'loss.ce_weight' and 'loss.dice_weight' are both 0"):
        segmentation.Task(segmentation.Config(loss=segmentation.LossConfig(ce_weight=0, dice_weight=0))).check_config()
    with pytest.raises(ConfigError, match="'loss.tv_weight' are all 0"):
        style.Task(style.Config(loss=style.LossConfig(content_weight=0, style_weight=0))).check_config()


def test_help_shows_each_range(capsys):
    from kx_vision import train

    for task, lines in {
        "superres": ["  epochs = 8  (int, >= 1; ", "  optimizer.learning_rate = 0.001  (float, > 0; ",
                     "  time_budget = None  (float or null, > 0; "],
        "segmentation": ["  data.val_split = 0.2  (float, in (0, 1); ",
                         "  data.image_size = [96, 128]  (list of int, each >= 32; "],
    }.items():
        with pytest.raises(SystemExit):
            train.main([task, "--help"])
        out = capsys.readouterr().out
        for line in lines:
            assert line in out


@pytest.mark.parametrize("assignment, message", [
    ("epochs=0", "config key 'epochs' must be >= 1, got 0"),
    ("steps_per_epoch=-1", "config key 'steps_per_epoch' must be >= 1, got -1"),
])
def test_cli_refuses_nonsense_numbers_leaving_a_finished_run_alone(tmp_path, capsys, assignment, message):
    from kx_vision import train

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"a finished run's model")
    assert train.main(["superres", "--output", str(run), "--set", assignment]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["model.keras"]
    assert (run / "model.keras").read_bytes() == b"a finished run's model"


# --- "did you mean" (issue 17, item 3) ---

@pytest.mark.parametrize(
    "task, assignment, message",
    [
        ("style", "loss.name=l1", "unknown config key 'loss.name'; the keys of section 'loss' are: "
                                  "loss.vgg_weights, loss.content_layers, loss.style_layers, "
                                  "loss.style_layer_weights, loss.content_weight, loss.style_weight, "
                                  "loss.tv_weight, loss.style_size"),
        ("superres", "loss.nmae=l1", "unknown config key 'loss.nmae' (did you mean 'loss.name'?)"),
        ("superres", "model.patch_size=48", "unknown config key 'model.patch_size' (did you mean 'data.patch_size'?)"),
        ("superres", "learning_rate=1e-4",
         "unknown config key 'learning_rate' (did you mean 'optimizer.learning_rate'?)"),
        ("superres", "modle.num_blocks=2", "unknown config key 'modle.num_blocks' (did you mean 'model.num_blocks'?)"),
        ("superres", "epochs.max=2", "unknown config key 'epochs.max': 'epochs' is a value, not a section"),
        ("segmentation", "data.val_splitt=0.1",
         "unknown config key 'data.val_splitt' (did you mean 'data.val_split'?)"),
    ],
)
def test_unknown_key_hint(task, assignment, message):
    with pytest.raises(ConfigError) as info:
        config_lib.load(TASKS[task].Config, None, [assignment])
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_hint_never_proposes_the_section_of_the_typed_key(task):
    cls = TASKS[task].Config
    sections = {k.split(".")[0] for k in config_lib.flatten(cls()) if "." in k}
    for section in sections:
        for typed in ("name", "x", f"{section}s", "num_block"):
            with pytest.raises(ConfigError) as info:
                config_lib.load(cls, None, [f"{section}.{typed}=1"])
            assert f"did you mean '{section}'" not in str(info.value)


def test_hint_in_a_yaml_file(tmp_path):
    path = tmp_path / "style.yaml"
    path.write_text("loss:\n  name: l1\n")
    with pytest.raises(ConfigError) as info:
        config_lib.load(style.Config, str(path))
    assert str(info.value).startswith(f"config file {path}: unknown config key 'loss.name'; the keys of section 'loss'")


# --- base: (issue 18, item 4) ---

def test_base_chain_merges_key_by_key_relative_to_each_file(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "root.yaml").write_text(
        "scale: 4\nepochs: 20\nmodel:\n  num_blocks: 8\n  num_filters: 48\ndata:\n  train: [x, y]\n  batch_size: 8\n")
    (tmp_path / "middle.yaml").write_text("base: recipes/root.yaml\nmodel:\n  num_filters: 16\ndata:\n  train: [z]\n")
    (tmp_path / "recipes" / "leaf.yaml").write_text("base: ../middle.yaml\nepochs: 3\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # bases are found relative to the file naming them, not the working directory
    config = config_lib.load(SuperResConfig, "../recipes/leaf.yaml", ["data.batch_size=2"])
    assert (config.scale, config.epochs) == (4, 3)
    assert (config.model.num_blocks, config.model.num_filters) == (8, 16)  # sections merged key by key
    assert config.data.train == ["z"] and config.data.batch_size == 2  # a list replaced whole; --set last
    assert config.model.residual_scale == SuperResConfig().model.residual_scale


def test_base_cycles_missing_files_and_bad_values_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nepochs: 1\n")
    (tmp_path / "b.yaml").write_text("base: ./a.yaml\n")
    with pytest.raises(ConfigError, match=r"extend each other in a cycle \(base:\): .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        config_lib.load(SuperResConfig, str(tmp_path / "a.yaml"))
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        config_lib.load(SuperResConfig, str(tmp_path / "self.yaml"))
    (tmp_path / "orphan.yaml").write_text("base: parent/gone.yaml\n")
    with pytest.raises(ConfigError, match=rf"config file {tmp_path / 'orphan.yaml'}: base file not found: "
                                          rf"{tmp_path / 'parent' / 'gone.yaml'}"):
        config_lib.load(SuperResConfig, str(tmp_path / "orphan.yaml"))
    (tmp_path / "list.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="'base' must be the path of the config file it extends"):
        config_lib.load(SuperResConfig, str(tmp_path / "list.yaml"))
    (tmp_path / "bad_base.yaml").write_text("optimizer:\n  warmup_steps: -1\n")
    (tmp_path / "child.yaml").write_text("base: bad_base.yaml\n")
    with pytest.raises(ConfigError, match=rf"^config file {tmp_path / 'bad_base.yaml'}: config key "
                                          r"'optimizer.warmup_steps' must be >= 0"):
        config_lib.load(SuperResConfig, str(tmp_path / "child.yaml"))


def test_no_task_has_a_key_named_base():
    for task in TASKS.values():
        assert config_lib.BASE_KEY not in {f.name for f in dataclasses.fields(task.Config)}


# configs/edsr_baseline_x4.yaml as it was written out in full, before it extended the x2 recipe.
X4_IN_FULL = """
scale: 4
epochs: 15
steps_per_epoch: 1000
init_from: runs/edsr_x2/model.keras
freeze_transferred_epochs: 1
model:
  num_blocks: 16
  num_filters: 64
  residual_scale: 0.1
data:
  train: [../shared/data/sr/T91, ../shared/data/sr/BSD200]
  val: [../shared/data/sr/Set5]
  patch_size: 192
  batch_size: 16
  skip_small: true
loss:
  name: l1
optimizer:
  learning_rate: 1.0e-4
  schedule: cosine
  warmup_steps: 200
"""


def test_x4_recipe_extends_x2_with_the_same_effective_config(tmp_path):
    x4 = CONFIGS / "edsr_baseline_x4.yaml"
    assert "base: edsr_baseline_x2.yaml" in x4.read_text()
    full = tmp_path / "x4_full.yaml"
    full.write_text(X4_IN_FULL)
    assert config_lib.to_dict(config_lib.load(SuperResConfig, str(x4))) == config_lib.to_dict(
        config_lib.load(SuperResConfig, str(full)))


def test_preset_recipes_train_what_their_presets_name():
    """configs/presets/<name>.yaml trains the architecture and scale that PRESETS records for <name>; the x4
    recipe grows from the x2 preset, and the GPU recipes change only how it is trained."""
    from kx_vision.models import presets

    for name in ("edsr_8x32_x2", "edsr_8x32_x4"):
        entry = presets.PRESETS[name]
        assert entry["recipe"] == f"configs/presets/{name}.yaml" and entry["recipe"] in entry["train"]
        for recipe in (CONFIGS / "presets" / f"{name}.yaml", CONFIGS / "presets" / f"{name}_gpu.yaml"):
            config = config_lib.load(SuperResConfig, str(recipe))
            assert (config.scale, config.model.num_blocks, config.model.num_filters, config.model.residual_scale) == (
                entry["config"]["scale"], entry["config"]["num_blocks"], entry["config"]["num_filters"],
                entry["config"]["residual_scale"]), recipe
            assert config.data.train == ["../shared/data/sr/T91", "../shared/data/sr/BSD200"], recipe
            assert config.data.val == ["../shared/data/sr/Set5"], recipe
    x2 = config_lib.load(SuperResConfig, str(CONFIGS / "presets" / "edsr_8x32_x2.yaml"))
    x4 = config_lib.load(SuperResConfig, str(CONFIGS / "presets" / "edsr_8x32_x4.yaml"))
    assert (x2.time_budget, x4.time_budget) == (7200, 5400)  # the 120 + 90 CPU-minutes
    assert x4.init_from == "edsr_8x32_x2" and x4.freeze_transferred_epochs == 1
    assert x4.data.patch_size // 4 == x2.data.patch_size // 2  # the same LR patch


def test_cli_takes_a_config_with_a_base(tmp_path, capsys):
    from kx_vision import train

    x4 = str(CONFIGS / "edsr_baseline_x4.yaml")
    with pytest.raises(SystemExit) as info:
        train.main(["superres", "--config", x4, "--help"])
    assert info.value.code == 0 and "config keys" in capsys.readouterr().out
    # the chain is read through the command line too: the error is about the key set, not the files
    assert train.main(["superres", "--config", x4, "--output", str(tmp_path / "r"), "--set", "epochs=0"]) == 2
    assert "config key 'epochs' must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
