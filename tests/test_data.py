"""load_images / read_images / as_dataset: decoding, EXIF, alpha, 16-bit, channels, sizes, errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlens.data import Preprocess, as_dataset, load_images, read_images
from cnnlens.models.spec import ModelSpec, PixelModel


def spec_model(channels=3, size=(8, 8), classes=("a", "b", "c"), **extra):
    net = nn.Sequential(nn.Conv2d(channels, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, len(classes)))
    spec = ModelSpec(
        name="tiny",
        input_size=size,
        channels=channels,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        class_names=tuple(classes),
        extra=extra,
    )
    return PixelModel(net, spec)


# -- decoding ----------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)  # H=16, W=32: left half black, right half white
    a[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    p = tmp_path / "rot.jpg"
    Image.fromarray(a).save(p, exif=exif, quality=95)
    x = load_images(p)
    expected = torch.from_numpy(np.rot90(a, k=-1).copy()).permute(2, 0, 1).float() / 255  # clockwise
    assert x.shape == (1, 3, 32, 16)
    assert (x[0] - expected).abs().mean() < 0.02
    assert x[0, :, :14].max() < 0.1 and x[0, :, 18:].min() > 0.9  # top black, bottom white


def test_rgba_composited_on_background_exactly(tmp_path):
    a = np.zeros((2, 3, 4), np.uint8)
    a[..., 0], a[..., 1], a[..., 2], a[..., 3] = 200, 100, 0, 64
    a[0, 0, 3] = 0  # fully transparent → background
    a[0, 1, 3] = 255  # opaque → colour
    p = tmp_path / "alpha.png"
    Image.fromarray(a, "RGBA").save(p)
    bg = (0.2, 0.4, 1.0)
    x = load_images(p, background=bg)[0]
    al = 64 / 255
    want = torch.tensor([al * 200 / 255 + (1 - al) * 0.2, al * 100 / 255 + (1 - al) * 0.4, 0 + (1 - al) * 1.0])
    assert torch.allclose(x[:, 1, 1], want, atol=1e-6)
    assert torch.allclose(x[:, 0, 0], torch.tensor(bg), atol=1e-6)
    assert torch.allclose(x[:, 0, 1], torch.tensor([200 / 255, 100 / 255, 0.0]), atol=1e-6)
    # the same from an in-memory PIL image and from a numpy RGBA array
    assert torch.equal(load_images(Image.open(p), background=bg)[0], x)
    assert torch.allclose(load_images(a, background=bg)[0], x, atol=1e-6)


def test_la_and_palette_transparency(tmp_path):
    la = np.zeros((1, 2, 2), np.uint8)
    la[0, 0] = (100, 128)
    la[0, 1] = (0, 0)
    bg = (1.0, 0.5, 0.0)
    x = load_images(la, background=bg)[0]
    luma = 0.299 * 1.0 + 0.587 * 0.5
    assert x.shape == (1, 1, 2)  # grey stays grey
    assert torch.allclose(x[0, 0], torch.tensor([128 / 255 * 100 / 255 + (1 - 128 / 255) * luma, luma]), atol=1e-6)
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 1  # index 1 (green) is transparent
    p = tmp_path / "pal.png"
    pal.save(p, transparency=1)
    y = load_images(p, background=bg)[0]
    assert torch.allclose(y[:, 0, 0], torch.tensor([1.0, 0, 0])) and torch.allclose(y[:, 0, 1], torch.tensor(bg))


def test_16bit_png_scaled_by_its_own_range(tmp_path):
    a = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    x = load_images(p)[0, 0]
    assert torch.allclose(x, torch.tensor([[0.0, 0.25], [0.5, 1.0]]), atol=1e-6)  # (v − 1000) / 4000
    assert torch.allclose(load_images(a)[0, 0], x, atol=1e-6)  # uint16 arrays likewise


def test_grey_to_rgb_and_rgb_to_grey_follow_the_model(tmp_path, untouched, caplog):
    g = np.array([[0, 51], [102, 255]], np.uint8)
    p = tmp_path / "grey.png"
    Image.fromarray(g).save(p)
    rgb_model = untouched(spec_model(channels=3, size=(2, 2)))
    with caplog.at_level(logging.INFO, logger="cnnlens.data"):
        x = load_images(p, rgb_model)
    assert "grey→RGB" in caplog.text
    assert x.shape == (1, 3, 2, 2)
    for c in range(3):
        assert torch.allclose(x[0, c], torch.from_numpy(g).float() / 255)
    c = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    grey_model = untouched(spec_model(channels=1, size=(4, 4)))
    y = load_images(c, grey_model)
    pil_l = np.asarray(Image.fromarray(c).convert("L")).astype(np.float32) / 255  # PIL rounds to 8 bits
    assert y.shape == (1, 1, 4, 4)
    assert np.abs(y[0, 0].numpy() - pil_l).max() <= 0.5 / 255 + 1e-6
    assert load_images(np.full((3, 3, 3), 255, np.uint8), channels=1).min() == 1.0  # white stays exactly 1


def test_arrays_and_tensors_pass_through():
    x = torch.rand(2, 3, 5, 5)
    assert torch.equal(load_images(x), x)
    assert torch.equal(load_images([x[0], x[1]]), x)
    u = np.random.default_rng(1).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    assert torch.equal(load_images(u)[0], torch.from_numpy(u).permute(2, 0, 1).float() / 255)
    assert torch.equal(load_images(torch.from_numpy(u).permute(2, 0, 1))[0], load_images(u)[0])
    with pytest.raises(ValueError, match=r"values in \[6, 255\]; cnnlens expects \[0, 1\].*by 255"):
        load_images(u.astype(np.float32))
    with pytest.raises(ValueError, match="channels-first"):
        load_images(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="different sizes.*size="):
        load_images([np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)])
    with pytest.raises(TypeError, match="cannot read int"):
        load_images([3])


# -- sizes -------------------------------------------------------------------


def test_crop_for_rgb_models_and_stretch_for_others(untouched):
    a = np.zeros((16, 32, 3), np.uint8)
    a[..., 2] = 255
    a[:, :8] = (255, 0, 0)  # the left quarter is red
    rgb = untouched(spec_model(channels=3, size=(8, 8)))
    x = load_images(a, rgb)[0]
    assert x.shape == (3, 8, 8)
    assert x[0].max() < 0.02 and x[2].min() > 0.98  # centre crop: the red border is cut off, no distortion
    grey = untouched(spec_model(channels=1, size=(8, 8)))
    y = load_images(a, grey)[0, 0]
    red_l, blue_l = 0.299, 0.114
    assert abs(float(y[:, 0].mean()) - red_l) < 0.02 and abs(float(y[:, -1].mean()) - blue_l) < 1e-4  # stretched
    z = load_images(a, size=(4, 8))[0]  # size= is a plain resize
    assert z.shape == (3, 4, 8) and z[0, :, 0].min() > 0.98
    stretch = untouched(spec_model(channels=3, size=(8, 8), resize="stretch"))
    assert load_images(a, stretch)[0, 0, :, 0].min() > 0.98


# -- files, folders, errors ----------------------------------------------------


def _write_images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((4, 4, 3), 60 * i, np.uint8)).save(folder / f"img{i}.png")


def test_explicit_corrupt_or_non_image_file_is_named(tmp_path):
    bad = tmp_path / "broken.png"
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good)
    bad.write_bytes(good.read_bytes()[:1500])  # truncated inside the pixel data
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    for f in (bad, txt):
        with pytest.raises(ValueError) as e:
            load_images([good, f])
        msg = str(e.value)
        assert str(f) in msg and "\n" not in msg
    with pytest.raises(ValueError, match="no such file"):
        load_images(tmp_path / "missing.jpg")
    r = read_images([good, bad], on_error="skip")
    assert len(r) == 1 and r.skipped[0][0] == str(bad)


def test_folder_mode_skips_and_counts(tmp_path, caplog):
    d = tmp_path / "photos"
    _write_images(d, 2)
    _write_images(d / "sub", 1)
    (d / "readme.txt").write_text("not an image")
    (d / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    (d / ".hidden.png").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="cnnlens.data"):
        r = read_images(d)
    assert r.names == ["img0", "img1", "img0-2"]  # sorted by path, stems made unique
    assert sorted(s.split("/")[-1] for s, _ in r.skipped) == ["readme.txt", "zz_corrupt.jpg"]
    assert "skipped 2 file(s)" in caplog.text
    assert torch.allclose(r.images[1], torch.full((3, 4, 4), 60 / 255))
    g = read_images(str(d / "*.png"))
    assert g.names == ["img0", "img1"]
    with pytest.raises(ValueError, match="no file matches"):
        load_images(str(d / "*.gif"))


# -- datasets ----------------------------------------------------------------


def test_as_dataset_image_folder_matches_load_images_and_class_names(tmp_path, untouched):
    root = tmp_path / "folder"
    _write_images(root / "c", 2)
    _write_images(root / "b", 1)
    model = untouched(spec_model(channels=1, size=(3, 3), classes=("a", "b", "c")))
    ds = as_dataset(str(root), model)
    assert len(ds) == 3
    labels = [ds[i][1] for i in range(3)]
    assert labels == [1, 2, 2]  # folder names matched to the model's class names, not folder order
    x0, _ = ds[1]
    assert torch.equal(x0, load_images(root / "c" / "img0.png", model)[0])
    assert isinstance(Preprocess.for_model(model), Preprocess)


def test_as_dataset_errors_and_pass_through(tmp_path, untouched):
    ds = torch.utils.data.TensorDataset(torch.rand(2, 1, 2, 2), torch.zeros(2).long())
    dl = torch.utils.data.DataLoader(ds)
    assert as_dataset(ds) is ds and as_dataset(dl) is dl
    with pytest.raises(ValueError, match="not a dataset name and no such directory.*'digits'"):
        as_dataset(str(tmp_path / "nope"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        as_dataset(f)
    with pytest.raises(TypeError, match="cannot use int as a dataset.*ImageFolder"):
        as_dataset(42)
    with pytest.raises(TypeError, match="TensorDataset"):
        as_dataset(torch.rand(2, 1, 2, 2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images and no class sub-folders"):
        as_dataset(tmp_path / "empty")
    root = tmp_path / "four"
    for c in "wxyz":
        _write_images(root / c, 1)
    with pytest.raises(ValueError, match="4 class folders.*3 classes"):
        as_dataset(root, untouched(spec_model()))


def test_digits_dataset_is_the_held_out_split():
    digits = pytest.importorskip("cnnlens.models.digits")
    ds = as_dataset("digits")
    ref = digits.digits_split("test")
    assert len(ds) == len(ref) and 300 < len(ds) < 1797
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, ref[0][0]) and int(y) == int(ref[0][1])
