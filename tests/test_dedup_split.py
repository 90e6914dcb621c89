import io

import numpy as np
from PIL import Image

from screening_core import preprocessing
from tests import synth
from trainer import dedup


def _variants(base, rng):
    """A re-saved JPEG copy, a noisy copy and a slightly shifted copy of `base`."""
    jpeg = np.asarray(Image.open(io.BytesIO(synth.encode(base, "JPEG", quality=70))))
    noisy = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(base, 2, axis=1)
    return [jpeg, noisy, shifted]


def test_near_duplicates_share_a_group_and_side():
    rng = np.random.default_rng(0)
    images, origin, labels = [], [], []
    for i in range(40):
        base = synth.brain_slice(i, 96, lesion=i % 2 == 0)
        for img in [base] + _variants(base, rng):
            images.append(img)
            origin.append(i)
            labels.append(i % 2)
    thumbs = np.stack([dedup.thumbnail(preprocessing.decode_raster(synth.encode(im))) for im in images])
    groups = dedup.group_near_duplicates(thumbs, block=16)
    origin = np.array(origin)
    for i in range(40):  # every copy of an original lands in the original's group
        assert len(set(groups[origin == i])) == 1
    for seed in range(5):
        is_val = dedup.split_groups(groups, np.array(labels), 0.25, seed)
        for g in np.unique(groups):
            assert len(set(is_val[groups == g])) == 1
        assert 0.15 <= is_val.mean() <= 0.35
    a = dedup.split_groups(groups, np.array(labels), 0.25, 7)
    b = dedup.split_groups(groups, np.array(labels), 0.25, 7)
    assert (a == b).all()


def test_distinct_images_are_not_grouped():
    thumbs = np.stack([dedup.thumbnail(synth.brain_slice(i, 96, lesion=True).astype(np.float32))
                       for i in range(30)])
    groups = dedup.group_near_duplicates(thumbs)
    assert len(np.unique(groups)) >= 25


def test_a_group_pattern_that_misses_some_files_of_a_collection_is_said():
    """The Makefile's pattern `_\\d+` missed BraTS-PEDs' `_z085.png` slices: those were split by near-duplicate
    group alone, silently. The pattern the lesion trainer uses names them all."""
    from trainer import discovery, lesion_train, loading
    names = ["TCGA_DU_5871_19941206_01.jpg", "bratsped_BraTS-PED-00001-000_z085.png", "vol_subj13_z075.png"]
    examples = [discovery.Example(path=f"/d/{c}/tumor/{n}", label=1, class_name="tumor", source="", collection=c)
                for c, n in zip(("lgg", "brats-ped", "healthy-heads"), names, strict=True)]
    examples.append(discovery.Example(path="/d/brats-ped/tumor/bratsped_BraTS-PED-00002-000_12.png", label=1,
                                      class_name="tumor", source="", collection="brats-ped"))
    examples.append(discovery.Example(path="/d/brain-mri/glioma/Tr-gl_0010.jpg", label=1, class_name="glioma",
                                      source="", collection="brain-mri"))
    old = r"^((?:TCGA_|.*brats).+)_\d+\.\w+$"
    lines = loading.pattern_coverage(examples, loading.pattern_keys(examples, old), old)
    assert any(line.startswith("Warning:") and "1 of 2 files in brats-ped" in line for line in lines)
    assert any(line.startswith("healthy-heads: --group-pattern matches none") for line in lines)
    assert not any("lgg" in line for line in lines)
    new = lesion_train.GROUP_PATTERN
    keys = loading.pattern_keys(examples, new)
    assert keys[:4] == ["TCGA_DU_5871_19941206", "bratsped_BraTS-PED-00001-000", "vol_subj13",
                        "bratsped_BraTS-PED-00002-000"]
    assert not [line for line in loading.pattern_coverage(examples, keys, new) if line.startswith("Warning:")]
    assert loading.pattern_coverage(examples, keys, "") == []
