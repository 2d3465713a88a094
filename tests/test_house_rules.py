"""Rules that keep the library multi-backend (see ../shared/DESIGN.md)."""

import re
from pathlib import Path

import keras
import pytest

import kx_vision

PACKAGE = Path(kx_vision.__file__).parent
BACKEND_FREE = ["layers", "models", "losses.py", "metrics.py", "data/transforms.py", "backbones.py", "image_ops.py"]


@pytest.mark.parametrize("part", BACKEND_FREE)
def test_keras_ops_only(part):
    path = PACKAGE / part
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    pattern = re.compile(r"^\s*(import|from)\s+(tensorflow|jax|torch)\b", re.M)
    offenders = [str(f) for f in files if pattern.search(f.read_text())]
    assert not offenders, f"backend-specific imports in {offenders}"
    assert not any("layers.Lambda(" in f.read_text() for f in files)


def test_python_in_tf_data_goes_through_the_exit_gate():
    # `kx_vision.data.tf_python` stops such calls at interpreter exit; called directly, they can hang it there.
    pattern = re.compile(r"\b(tf\.numpy_function|tf\.py_function|from_generator)\(")
    offenders = [str(f) for f in sorted(PACKAGE.rglob("*.py"))
                 if f.name != "tf_python.py" and pattern.search(re.sub(r"tf_python\.\w+\(", "", f.read_text()))]
    assert not offenders, f"tf.data calls into Python not through kx_vision.data.tf_python in {offenders}"


def test_public_objects_are_registered():
    from kx_vision import layers, losses, metrics, models
    from kx_vision.training import optimizers

    for obj in [layers.PixelShuffle, layers.ResidualBlock, layers.ICNR, layers.PadToMultiple, layers.CropLike,
                layers.ImagePreprocessing, layers.ReflectionPadding2D, models.EDSR, models.UNet,
                models.UpsampleHeadNet, models.StyleTransferNet, losses.PerceptualLoss, losses.SegmentationLoss,
                losses.StyleTransferLoss, metrics.PSNR, metrics.SSIM, metrics.PixelAccuracy, metrics.Dice,
                metrics.StyleLossPart, layers.Blur2D, layers.BilinearUpSampling2D, models.FPN, optimizers.OneCycle, optimizers.Adam, optimizers.AdamW, optimizers.SGD]:
        name = keras.saving.get_registered_name(obj)
        assert name == f"kx_vision>{obj.__name__}"
        assert keras.saving.get_registered_object(name) is obj


# The floors of the package, lowest first (ARCHITECTURE.md): a folder or a module at the package's root each. A
# module imports only from lower floors or from its own group (`models.fpn` from `models.unet`; never `models`
# from `losses`, nor `evaluate` from `predict`); function-local imports count too.
FLOORS = [
    ["errors", "version", "fileio", "messages"],
    ["config", "cli", "image_ops"],
    ["layers"],
    ["backbones"],
    ["models", "losses", "metrics", "data"],
    ["inference"],
    ["tasks"],
    ["training"],
    ["train", "evaluate", "predict", "export", "prepare", "__main__"],
    [""],  # the package itself (`import kx_vision` registers the public objects)
]
# Inside these folders the modules have floors of their own, lowest first (a module imports only from lower
# ones); the folder's `__init__` is above them all.
FLOORS_WITHIN = {
    "inference": [["pictures", "tiling"], ["runtimes"]],
    "training": [["keras_fixes", "optimizers", "run_folder", "callbacks", "lr_finder"], ["distribute"], ["trainer"]],
}


# The one import allowed to reach up: `kx-vision COMMAND` (`cli.main`) imports the command it runs, when it runs it
# (`cli.COMMANDS`); the commands themselves import `cli` for its error handler.
DISPATCH = {("kx_vision.cli", f"kx_vision.{name}") for name in ("train", "evaluate", "predict", "export", "prepare")}


def _group(module):
    """`kx_vision.models.unet` -> "models"; `kx_vision` -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _place(module):
    """(group, floor, floor within the group's folder): `kx_vision.training.trainer` -> ("training", 7, 2)."""
    group = _group(module)
    floor = next(i for i, groups in enumerate(FLOORS) if group in groups)
    within = FLOORS_WITHIN.get(group)
    if within is None:
        return group, floor, 0
    name = module.split(".")[2] if module.count(".") >= 2 else None
    return group, floor, next((i for i, names in enumerate(within) if name in names), len(within))


def _imports_of_package():
    import ast

    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("kx_vision",) + path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("kx_vision")}
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("kx_vision"):
                for alias in node.names:  # `from kx_vision import layers` imports the module kx_vision.layers
                    sub = f"{node.module}.{alias.name}"
                    is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                        PACKAGE.parent / sub.replace(".", "/")).is_dir()
                    found.add(sub if is_module else node.module)
        graph[module] = found
    return graph


def _reaching_up(graph):
    """The imports of `graph` that reach up or sideways."""
    wrong = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            (here, floor, within), (there, target_floor, target_within) = _place(module), _place(target)
            if here == there and (here not in FLOORS_WITHIN or module == target):
                continue
            if (target_floor, target_within) >= (floor, within) and (module, target) not in DISPATCH:
                wrong.append(f"{module} -> {target}")
    return wrong


def test_imports_point_down_the_floors():
    known = {group for groups in FLOORS for group in groups}
    graph = _imports_of_package()
    unknown = sorted({_group(m) for m in graph} - known)
    assert not unknown, f"modules on no floor (add them to FLOORS and ARCHITECTURE.md): {unknown}"
    unplaced = sorted(m for m in graph if _group(m) in FLOORS_WITHIN and m.count(".") >= 2
                      and _place(m)[2] == len(FLOORS_WITHIN[_group(m)]))
    assert not unplaced, f"modules on no floor of their folder (add them to FLOORS_WITHIN): {unplaced}"
    wrong = _reaching_up(graph)
    assert not wrong, "imports reaching up or sideways:\n" + "\n".join(wrong)


def test_the_floor_check_catches_a_sideways_import(tmp_path):
    # The check above must see function-local imports: a model that imported a loss would be caught.
    floor_of = {group: i for i, groups in enumerate(FLOORS) for group in groups}
    assert floor_of["losses"] == floor_of["models"]  # so models -> losses counts as sideways
    graph = _imports_of_package()
    assert "kx_vision.training.trainer" in graph["kx_vision.train"]  # imported inside main(): seen
    assert {target for _, target in DISPATCH} <= graph["kx_vision.cli"]  # cli.COMMANDS: real imports
    # and imports that point up, between folders and inside one, are caught
    up = {"kx_vision.models.edsr": {"kx_vision.inference.tiling"}, "kx_vision.tasks.base": {"kx_vision.training"},
          "kx_vision.inference.tiling": {"kx_vision.inference.runtimes"},
          "kx_vision.training.optimizers": {"kx_vision.training.trainer"},
          "kx_vision.training.callbacks": {"kx_vision.training.lr_finder"},
          "kx_vision.training.trainer": {"kx_vision.train"}}
    assert _reaching_up(up) == sorted(f"{m} -> {t}" for m, targets in up.items() for t in targets)
    assert _reaching_up({"kx_vision.training.trainer": {"kx_vision.training.distribute", "kx_vision.tasks.base"},
                         "kx_vision.models.fpn": {"kx_vision.models.unet"}}) == []
