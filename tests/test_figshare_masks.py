"""Borrowed tumor borders reach only the brain-mri slices that are the same picture, in the right place."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from trainer import figshare_masks, lesion_data
from trainer.discovery import Example


def _head(seed, lesion_xy):
    """A 512 px 'slice': an ellipse of textured tissue with a bright round lesion at lesion_xy."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", (512, 512), 0)
    d = ImageDraw.Draw(img)
    d.ellipse((60, 40, 452, 472), fill=90)
    x, y = lesion_xy
    d.ellipse((x - 40, y - 40, x + 40, y + 40), fill=230)
    a = np.asarray(img, np.float32) + rng.normal(0, 25, (512, 512)) * (np.asarray(img) > 0)
    small = Image.fromarray(rng.integers(0, 120, (16, 16), dtype=np.uint8)).resize((512, 512), Image.Resampling.BICUBIC)
    a += np.asarray(small, np.float32) * (a > 0)  # coarse texture: each slice differs at 32 px
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _circle(x, y, r=40, n=24):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [[float(x + r * np.cos(a)), float(y + r * np.sin(a))] for a in t]


@pytest.fixture
def collections(tmp_path):
    fs = tmp_path / "figshare"
    rows = []
    for idx, (folder, cls, xy) in enumerate([("1", "meningioma", (150, 300)), ("0", "pituitary", (256, 256)),
                                             ("2", "glioma", (350, 150))], start=1):
        (fs / folder).mkdir(parents=True, exist_ok=True)
        _head(idx, xy).save(fs / folder / f"{idx}.jpg", quality=95)
        rows.append({"file": f"{idx}.png", "label": folder, "has_mask": "True",
                     "tumorBorder": json.dumps(_circle(*xy)), "label_name": cls})
    borders = tmp_path / "borders.csv"
    with open(borders, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    bm = tmp_path / "brain-mri"
    for cls in ("meningioma", "glioma", "pituitary", "notumor"):
        (bm / cls).mkdir(parents=True)
    Image.open(fs / "1" / "1.jpg").resize((224, 224)).save(bm / "meningioma" / "Tr-me_0001.jpg", quality=95)
    # the same picture filed under another class gets no mask: the borders belong to a pituitary tumor
    Image.open(fs / "0" / "2.jpg").resize((224, 224)).save(bm / "glioma" / "Tr-gl_0007.jpg", quality=95)
    _head(99, (300, 300)).resize((224, 224)).save(bm / "pituitary" / "Tr-pi_0003.jpg", quality=95)  # not in figshare
    _head(5, (0, 0)).resize((224, 224)).save(bm / "notumor" / "Tr-no_0001.jpg", quality=95)
    return fs, borders, bm


def test_masks_go_to_the_same_picture_only_and_cover_the_drawn_tumor(collections, tmp_path):
    fs, borders, bm = collections
    out = tmp_path / "masks"
    per_class = figshare_masks.build(str(bm), str(fs), str(borders), str(out))
    assert sorted(p for p in os.listdir(out) if p.endswith(".png")) == ["Tr-me_0001.png"]
    assert per_class["meningioma"] == [1, 1] and per_class["glioma"] == [0, 1] and per_class["pituitary"] == [0, 1]
    m = np.asarray(Image.open(out / "Tr-me_0001.png")) > 0
    assert m.shape == (224, 224)
    ys, xs = np.nonzero(m)
    scale = 224 / 512  # border (150, 300) in the 512 px image, x first
    assert abs(xs.mean() - 150 * scale) < 2 and abs(ys.mean() - 300 * scale) < 2
    assert m.sum() == pytest.approx(np.pi * (40 * scale) ** 2, rel=0.15)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["licence"] == "CC BY 4.0" and prov["masks"][0]["figshare_index"] == "1"


def test_a_folder_other_than_the_figshare_classes_is_refused(collections, tmp_path):
    fs, borders, bm = collections
    (fs / "no-tumor").mkdir()
    with pytest.raises(SystemExit, match="no-tumor"):
        figshare_masks.build(str(bm), str(fs), str(borders), str(tmp_path / "masks"))


def test_masks_kept_outside_a_collection_carry_full_weight(tmp_path):
    mdir = tmp_path / "masks"
    mdir.mkdir()
    Image.new("L", (8, 8), 255).save(mdir / "Tr-me_0001.png")
    ex = [Example("/d/brain-mri/meningioma/Tr-me_0001.jpg", 1, "meningioma", "", "brain-mri"),
          Example("/d/brain-mri/glioma/Tr-gl_0002.jpg", 1, "glioma", "", "brain-mri"),
          Example("/d/brain-mri/notumor/Tr-no_0001.jpg", 0, "notumor", "", "brain-mri")]
    plan = lesion_data.mask_plan(ex, ["/d/brain-mri"], {"brain-mri": str(mdir)})
    assert plan == [(str(mdir / "Tr-me_0001.png"), 1.0), ("", 0.0), ("", 1.0)]
    assert lesion_data.mask_plan(ex, ["/d/brain-mri"]) == [("", 0.0)] * 3  # without them: labels only
