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
