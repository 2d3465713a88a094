"""`python -m kx_vision.prepare`: resize (images by area, masks by nearest) and BasicSR crops, resumable."""

import errno
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from kx_vision import prepare


def _save(array, path, mode=None, palette=None, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    if palette is not None:
        image = Image.fromarray(array, mode="L").convert("P")
        image.putpalette(palette)
    image.save(path, **options)
    return path


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")}


@pytest.fixture
def photos(tmp_path, rng):
    src = tmp_path / "src"
    _save(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), src / "wide.png")  # 64x48
    _save(rng.integers(0, 256, (50, 20), dtype=np.uint8), src / "sub" / "tall.jpg")  # 20x50 grayscale
    _save(rng.integers(0, 256, (10, 12, 4), dtype=np.uint8), src / "sub" / "small.png")  # 12x10 RGBA
    return src


# === resize ===

@pytest.mark.parametrize("side, size, expected", [
    ("shorter", 24, {"wide.png": (32, 24), "sub/tall.png": (20, 50), "sub/small.png": (12, 10)}),
    ("shorter", 10, {"wide.png": (13, 10), "sub/tall.png": (10, 25), "sub/small.png": (12, 10)}),
    ("longer", 32, {"wide.png": (32, 24), "sub/tall.png": (13, 32), "sub/small.png": (12, 10)}),
])
def test_resize_sizes_keep_aspect_and_never_enlarge(photos, tmp_path, capsys, side, size, expected):
    dst = tmp_path / "dst"
    code = prepare.main(["resize", str(photos), str(dst), "--size", str(size), "--side", side, "--workers", "1"])
    assert code == 0
    assert _files(dst) == sorted(expected)  # subfolders mirrored, PNG out
    for name, wh in expected.items():
        assert Image.open(dst / name).size == wh
    out = capsys.readouterr().out
    assert "prepare resize: 3 written" in out and "0 skipped as done" in out and "0 unreadable" in out
    kept = sum(wh == Image.open(photos / n.replace("tall.png", "tall.jpg")).size for n, wh in expected.items())
    assert f"({kept} kept at their size" in out


def test_resize_averages_areas_and_keeps_modes(tmp_path, rng, capsys):
    src = tmp_path / "src"
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    _save(rgb, src / "rgb.png")
    _save(rng.integers(0, 256, (48, 64, 4), dtype=np.uint8), src / "rgba.png")
    gray16 = rng.integers(0, 65536, (48, 64), dtype=np.uint16)
    _save(gray16, src / "gray16.png")
    _save(rng.integers(0, 4, (48, 64), dtype=np.uint8), src / "pal.png", palette=[0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    _save(rgb, src / "cmyk.jpg", mode="CMYK")
    _save(rng.random((48, 64)).astype(np.float32), src / "float.tif")  # no 8- or 16-bit form: skipped
    assert prepare.main(["resize", str(src), str(tmp_path / "dst"), "--size", "24", "--workers", "1"]) == 1
    assert not (tmp_path / "dst" / "float.png").exists()
    # x2 by area: each pixel the mean of a 2x2 block (rounded); nearest or bilinear would fail this
    out = np.asarray(Image.open(tmp_path / "dst" / "rgb.png")).astype(np.float64)
    mean = rgb.astype(np.float64).reshape(24, 2, 32, 2, 3).mean(axis=(1, 3))
    assert out.shape == (24, 32, 3) and np.abs(out - mean).max() <= 0.5 + 1e-9
    assert Image.open(tmp_path / "dst" / "rgba.png").mode == "RGBA"
    sixteen = Image.open(tmp_path / "dst" / "gray16.png")
    assert sixteen.mode.startswith("I") and sixteen.size == (32, 24)
    mean16 = gray16.astype(np.float64).reshape(24, 2, 32, 2).mean(axis=(1, 3))
    assert np.abs(np.asarray(sixteen).astype(np.float64) - mean16).max() <= 0.5 + 1e-9  # 16 bits, not 8
    assert Image.open(tmp_path / "dst" / "pal.png").mode == "RGB"  # a palette image (no --masks) becomes RGB
    assert Image.open(tmp_path / "dst" / "cmyk.png").mode == "RGB"
    assert "float.tif: cannot convert image (mode F)" in capsys.readouterr().err


def test_resize_masks_nearest_keeps_ids_and_palette(tmp_path, rng):
    images, masks = tmp_path / "images", tmp_path / "masks"
    _save(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8), images / "car.jpg")
    ids = rng.choice(np.array([0, 3, 7, 200], np.uint8), size=(45, 61))
    palette = list(rng.integers(0, 256, 768))
    _save(ids, masks / "car_mask.gif", palette=palette, optimize=False)  # a palette GIF, as Carvana's
    assert set(np.unique(np.asarray(Image.open(masks / "car_mask.gif"))).tolist()) == {0, 3, 7, 200}
    gray = rng.choice(np.array([0, 1, 11], np.uint8), size=(48, 64))
    _save(gray, masks / "plain.png")
    for folder, extra in ((images, []), (masks, ["--masks"])):
        assert prepare.main(["resize", str(folder), str(tmp_path / f"{folder.name}_small"), "--size", "24",
                             "--workers", "1", *extra]) == 0
    resized = Image.open(tmp_path / "masks_small" / "car_mask.png")
    assert resized.size == Image.open(tmp_path / "images_small" / "car.png").size == (33, 24)  # stays paired
    assert resized.mode == "P" and resized.getpalette()[:12] == Image.open(masks / "car_mask.gif").getpalette()[:12]
    values = set(np.unique(np.asarray(resized)).tolist())
    assert values <= {0, 3, 7, 200} and len(values) == 4  # area or bilinear would invent ids in between
    plain = np.asarray(Image.open(tmp_path / "masks_small" / "plain.png"))
    assert plain.shape == (24, 32) and np.array_equal(plain, gray[1::2, 1::2])  # x2 nearest: pixel centres


# === crop ===

def _basicsr_positions(length, crop, step, thresh):
    """BasicSR's extract_subimages rule, written with NumPy as it is there."""
    space = np.arange(0, length - crop + 1, step)
    if length - (space[-1] + crop) > thresh:
        space = np.append(space, length - crop)
    return space.tolist()


@pytest.mark.parametrize("length, crop, step, thresh", [
    (48, 20, 15, 0), (64, 20, 15, 0), (60, 20, 20, 0), (61, 20, 20, 0), (61, 20, 20, 1), (70, 20, 15, 8),
    (20, 20, 5, 0), (100, 32, 7, 3), (2040, 480, 240, 0), (1356, 480, 240, 0),
])
def test_crop_positions_match_basicsr(length, crop, step, thresh):
    assert prepare.crop_positions(length, crop, step, thresh) == _basicsr_positions(length, crop, step, thresh)


def test_crop_cuts_row_by_row_with_basicsr_names(photos, tmp_path, capsys):
    dst = tmp_path / "dst"
    code = prepare.main(["crop", str(photos), str(dst), "--crop", "20", "--step", "15", "--workers", "1"])
    assert code == 1  # small.png (12x10) is smaller than the crop
    wide = np.asarray(Image.open(photos / "wide.png"))
    rows, cols = _basicsr_positions(48, 20, 15, 0), _basicsr_positions(64, 20, 15, 0)
    assert len(rows) * len(cols) == 12
    index = 0
    for y in rows:
        for x in cols:
            index += 1
            crop = np.asarray(Image.open(dst / f"wide_s{index:03d}.png"))
            assert np.array_equal(crop, wide[y:y + 20, x:x + 20])
    tall = (dst / "sub").glob("tall_s*.png")
    assert len(list(tall)) == len(_basicsr_positions(50, 20, 15, 0)) * len(_basicsr_positions(20, 20, 15, 0))
    assert not list((dst / "sub").glob("small*"))
    captured = capsys.readouterr()
    assert "prepare crop: 2 cut into 15 crops" in captured.out and "1 smaller than --crop 20" in captured.out
    assert "small.png: 12x10 is smaller than --crop 20" in captured.err


def test_crop_keeps_palette_and_default_step_is_half(tmp_path, rng):
    src = tmp_path / "src"
    ids = rng.integers(0, 5, (40, 42), dtype=np.uint8)
    _save(ids, src / "m.png", palette=list(range(15)))
    assert prepare.main(["crop", str(src), str(tmp_path / "dst"), "--crop", "16", "--workers", "1"]) == 0
    assert json.loads((tmp_path / "dst" / prepare.SETTINGS).read_text())["step"] == 8
    names = _files(tmp_path / "dst")
    assert len(names) == len(_basicsr_positions(40, 16, 8, 0)) * len(_basicsr_positions(42, 16, 8, 0)) == 20
    last = Image.open(tmp_path / "dst" / "m_s020.png")  # the extra crop at the right edge, last row
    assert last.mode == "P" and np.array_equal(np.asarray(last), ids[24:, 26:])


# === resumable, atomic, parallel ===

@pytest.mark.parametrize("command", [["resize", "--size", "24"], ["crop", "--crop", "20", "--step", "15"]])
def test_second_run_writes_nothing_and_a_deleted_output_is_rewritten(photos, tmp_path, capsys, command):
    (photos / "sub" / "small.png").unlink()
    dst = tmp_path / "dst"
    args = [command[0], str(photos), str(dst), *command[1:], "--workers", "1"]
    assert prepare.main(args) == 0
    before = _mtimes(dst)
    capsys.readouterr()
    assert prepare.main(args) == 0
    assert _mtimes(dst) == before
    nothing = "0 written, 2 skipped as done" if command[0] == "resize" else "0 cut into 0 crops, 2 skipped as done"
    assert f"prepare {command[0]}: {nothing}" in capsys.readouterr().out
    victim = sorted(before)[1]
    victim.unlink()
    assert prepare.main(args) == 0
    after = _mtimes(dst)
    assert set(after) == set(before)
    assert [p for p in after if after[p] != before[p]] == [victim]  # only it was rewritten
    one = "1 written, 1 skipped as done" if command[0] == "resize" else "1 cut into 1 crops, 1 skipped as done"
    assert f"prepare {command[0]}: {one}" in capsys.readouterr().out


def test_other_options_or_foreign_files_in_dst_are_refused(photos, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert prepare.main(["resize", str(photos), str(dst), "--size", "24", "--workers", "1"]) == 0
    capsys.readouterr()
    assert prepare.main(["resize", str(photos), str(dst), "--size", "16", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "prepared with `resize --size 24 --side shorter`, not `resize --size 16 --side shorter`" in err
    assert err.count("\n") == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert prepare.main(["crop", str(photos), str(foreign), "--crop", "8", "--workers", "1"]) == 2
    assert "is not empty and was not written by" in capsys.readouterr().err
    assert prepare.main(["crop", str(photos), str(photos), "--crop", "8"]) == 2
    assert "is the input folder" in capsys.readouterr().err
    assert prepare.main(["crop", str(photos / "sub"), str(photos), "--crop", "8"]) == 2
    assert "holds the input folder" in capsys.readouterr().err
    assert prepare.main(["crop", str(tmp_path / "nope"), str(tmp_path / "out"), "--crop", "8"]) == 2
    assert "input folder not found" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_dst_inside_src_is_not_read_back(photos, capsys):
    args = ["resize", str(photos), str(photos / "small"), "--size", "24", "--workers", "1"]
    assert prepare.main(args) == 0
    assert prepare.main(args) == 0
    assert "0 written, 3 skipped as done" in capsys.readouterr().out.splitlines()[-1]
    assert not (photos / "small" / "small").exists()


def test_stale_temporaries_are_removed(photos, tmp_path, capsys):
    dst = tmp_path / "dst"
    args = ["resize", str(photos), str(dst), "--size", "24", "--workers", "1"]
    assert prepare.main(args) == 0
    dead = 4194305  # above Linux's largest pid: no such process
    stale = dst / "sub" / f".tmp-{dead}-tall.png"
    stale.write_bytes(b"half a png")
    (dst / "sub" / "tall.png").unlink()
    assert prepare.main(args) == 0
    assert not stale.exists() and Image.open(dst / "sub" / "tall.png").size == (20, 50)
    assert "removed temporary files" in capsys.readouterr().err


def test_pool_writes_the_same_files(photos, tmp_path):
    for workers in ("1", "2"):
        assert prepare.main(["crop", str(photos), str(tmp_path / workers), "--crop", "20", "--step", "15",
                             "--workers", workers]) == 1
    names = _files(tmp_path / "1")
    assert names == _files(tmp_path / "2") and len(names) == 15
    assert all((tmp_path / "1" / n).read_bytes() == (tmp_path / "2" / n).read_bytes() for n in names)


# === bad input, write errors ===

def test_unreadable_inputs_are_skipped_counted_and_named(photos, tmp_path, capsys):
    (photos / "garbage.png").write_bytes(b"not an image at all")
    data = (photos / "wide.png").read_bytes()
    (photos / "sub" / "truncated.png").write_bytes(data[: len(data) // 2])
    for command in (["resize", "--size", "24"], ["crop", "--crop", "8"]):
        dst = tmp_path / command[0]
        args = [command[0], str(photos), str(dst), *command[1:], "--workers", "2"]
        assert prepare.main(args) == 1
        captured = capsys.readouterr()
        assert "2 unreadable" in captured.out
        assert "warning: skipped" in captured.err and "garbage.png" in captured.err and "truncated.png" in captured.err
        assert not (dst / "garbage.png").exists() and not list(dst.rglob("truncated*"))
        assert prepare.main(args) == 1  # still skipped, still counted, the rest done
        assert "2 unreadable" in capsys.readouterr().out


def test_large_images_need_the_flag(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refused above 2000 pixels: wide.png has 3072
    assert prepare.main(["resize", str(photos), str(tmp_path / "a"), "--size", "24", "--workers", "1"]) == 1
    assert "--allow-large-images" in capsys.readouterr().err and not (tmp_path / "a" / "wide.png").exists()
    assert prepare.main(["resize", str(photos), str(tmp_path / "a"), "--size", "24", "--workers", "1",
                         "--allow-large-images"]) == 0
    assert Image.open(tmp_path / "a" / "wide.png").size == (32, 24) and Image.MAX_IMAGE_PIXELS == 1000


def test_full_disk_stops_with_one_line(photos, tmp_path, capsys, monkeypatch):
    from kx_vision import fileio

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(fileio, "atomic_write", full)
    assert prepare.main(["resize", str(photos), str(tmp_path / "dst"), "--size", "24", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device while writing") and err.count("\n") == 1
    assert "run the same command again" in err


def test_inputs_sharing_a_stem_keep_their_whole_name(tmp_path, rng):
    src = tmp_path / "src"
    _save(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), src / "photo.jpg")
    _save(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), src / "Photo.png")
    _save(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), src / "other.bmp")
    assert prepare.main(["resize", str(src), str(tmp_path / "dst"), "--size", "4", "--workers", "1"]) == 0
    assert _files(tmp_path / "dst") == ["Photo.png.png", "other.png", "photo.jpg.png"]


# === command line ===

def test_counter_without_tqdm_rewrites_one_line():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    counter = prepare._Counter(3, "crop", stream)
    for _ in range(3):
        counter.update()
    counter.close()
    assert stream.getvalue() == "\rcrop: 0/3 images\rcrop: 1/3 images\rcrop: 2/3 images\rcrop: 3/3 images\n"
    quiet = io.StringIO()  # not a terminal (a log file): nothing
    prepare._Counter(3, "crop", quiet).update()
    assert quiet.getvalue() == ""


_REPORT_IMPORTS = """
import atexit, sys

atexit.register(lambda: print("IMPORTED", *sorted(m for m in ("keras", "tensorflow", "jax", "cv2", "kx_vision.cli")
                                                   if m in sys.modules)))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_no_framework_is_imported(photos, tmp_path, backend):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_REPORT_IMPORTS)  # reports the modules loaded when Python exits

    def imported(*args):
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
        result = subprocess.run([sys.executable, "-m", "kx_vision.prepare", *args], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout, set(result.stdout.split("IMPORTED")[-1].split())

    out, modules = imported("crop", "--help")
    assert "--thresh-size" in out and modules == {"kx_vision.cli"}
    out, modules = imported("resize", str(photos), str(tmp_path / "dst"), "--size", "24", "--workers", "1")
    assert "prepare resize: 3 written" in out and modules == {"kx_vision.cli", "cv2"}


# === --format bmp ===

def _pixels(path):
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("command", [["resize", "--size", "24"], ["crop", "--crop", "20", "--step", "15"]])
def test_bmp_holds_the_png_pixels_and_resumes(tmp_path, rng, capsys, command):
    src = tmp_path / "src"
    _save(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), src / "rgb.png")
    _save(rng.integers(0, 256, (50, 40), dtype=np.uint8), src / "sub" / "gray.png")
    _save(rng.integers(0, 4, (40, 42), dtype=np.uint8), src / "pal.png", palette=list(range(12)))
    runs = {}
    for fmt in ("png", "bmp"):
        dst = tmp_path / fmt
        args = [command[0], str(src), str(dst), *command[1:], "--workers", "1", "--format", fmt]
        assert prepare.main(args) == 0
        runs[fmt] = _files(dst)
        assert json.loads((dst / prepare.SETTINGS).read_text())["format"] == fmt
    assert runs["bmp"] == [n[:-4] + ".bmp" for n in runs["png"]] and len(runs["png"]) >= 3
    for name in runs["bmp"]:
        bmp, png = Image.open(tmp_path / "bmp" / name), Image.open(tmp_path / "png" / (name[:-4] + ".png"))
        assert bmp.format == "BMP" and bmp.info.get("compression") == 0  # uncompressed
        assert bmp.mode == ("L" if name.startswith("sub/gray") else "RGB")  # grayscale stays L; palette -> RGB
        assert np.array_equal(np.asarray(bmp), np.asarray(png.convert(bmp.mode)))  # lossless
    assert "warning" not in capsys.readouterr().err
    bmp_args = [command[0], str(src), str(tmp_path / "bmp"), *command[1:], "--workers", "1", "--format", "bmp"]
    victim = tmp_path / "bmp" / runs["bmp"][0]
    victim.unlink()
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "bmp").rglob("*.bmp")}
    assert prepare.main(bmp_args) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "bmp").rglob("*.bmp") if p != victim} == before
    assert victim.exists()
    one = "1 written, 2 skipped as done" if command[0] == "resize" else "1 cut into 1 crops, 2 skipped as done"
    assert one in capsys.readouterr().out
    # a png DST is refused for bmp, and the other way round
    for fmt, dst in (("bmp", "png"), ("png", "bmp")):
        args = [command[0], str(src), str(tmp_path / dst), *command[1:], "--workers", "1", "--format", fmt]
        assert prepare.main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--format bmp`" in err and f"{tmp_path / dst} was prepared with" in err


def test_bmp_drops_alpha_with_a_warning_and_skips_16_bit(tmp_path, rng, capsys):
    src = tmp_path / "src"
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    _save(rgba, src / "rgba.png")
    _save(rng.integers(0, 65536, (40, 40), dtype=np.uint16), src / "gray16.png")
    assert prepare.main(["crop", str(src), str(tmp_path / "dst"), "--crop", "40", "--workers", "1",
                         "--format", "bmp"]) == 1
    out = Image.open(tmp_path / "dst" / "rgba_s001.bmp")
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), rgba[..., :3])  # colour under alpha kept
    assert _files(tmp_path / "dst") == ["rgba_s001.bmp"]
    captured = capsys.readouterr()
    assert "rgba.png: transparency dropped (BMP holds none): written as RGB" in captured.err
    assert "warning: skipped" in captured.err and "gray16.png: cannot convert image" in captured.err
    assert "16-bit" in captured.err and "1 unreadable" in captured.out
    # resize: alpha dropped before area averaging, so the RGB equals the png's colour channels
    (src / "gray16.png").unlink()
    for fmt in ("png", "bmp"):
        assert prepare.main(["resize", str(src), str(tmp_path / fmt), "--size", "20", "--workers", "1",
                             "--format", fmt]) == 0
    assert np.array_equal(_pixels(tmp_path / "bmp" / "rgba.bmp"), _pixels(tmp_path / "png" / "rgba.png")[..., :3])


def test_masks_refuse_bmp_with_one_line(photos, tmp_path, capsys):
    code = prepare.main(["resize", str(photos), str(tmp_path / "dst"), "--size", "24", "--masks", "--format", "bmp"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --masks writes png only") and err.count("\n") == 1
    assert not (tmp_path / "dst").exists()
    with pytest.raises(prepare.ConfigError, match="unknown image format .jpeg.; choose one of png, bmp"):
        prepare.CropOptions(8, 4, format="jpeg")


def test_settings_written_before_format_existed_mean_png(photos, tmp_path, capsys):
    dst = tmp_path / "dst"
    args = ["resize", str(photos), str(dst), "--size", "24", "--workers", "1"]
    assert prepare.main(args) == 0
    settings = json.loads((dst / prepare.SETTINGS).read_text())
    del settings["format"]
    (dst / prepare.SETTINGS).write_text(json.dumps(settings))
    capsys.readouterr()
    assert prepare.main(args) == 0 and "0 written, 3 skipped as done" in capsys.readouterr().out
    assert prepare.main([*args, "--format", "bmp"]) == 2
