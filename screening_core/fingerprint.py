"""Near-copy fingerprints: is this image (nearly) one the model was developed on?

A site that validates the model on public images it was trained or chosen on (a Kaggle download is the
obvious sample) measures its memory, not its accuracy, and would pass an unsafe model. The artifact
therefore carries a fingerprint of every image of its development collections, and brain-validate
refuses a verdict of "meets" when the sample holds near-copies of them (MIN_COPIES).

The similarity is trainer/dedup's: the Pearson correlation of head-cropped 48x48 thumbnails (re-saved,
resized or re-windowed copies and adjacent slices of one patient correlate >= 0.95). The artifact must not
carry pictures of its training images, so it stores no thumbnail: only 512 signs of fixed random
projections of it (SimHash). The angle between two thumbnails is about pi x (differing bits / 512), so a
Hamming distance <= MAX_DISTANCE means a correlation of about 0.96 or more.

Measured (`/work/s16/fp_measure2.py`, the shared collections): no image of lgg (6,215), brats-sample (640) or
the healthy heads (3,746) has a thumbnail correlation >= 0.95 with any of brain-mri's 5,612 (highest 0.944),
while 99.7 % of brain-mri images resized to 512 px and re-saved as JPEG do (92 % with a gamma of 0.8 too);
with the module's 512 bits and distance <= 44 against v17's 16,174 development fingerprints
(`/work/s16/fp_v17.py`), 99.6 % of 500 brain-mri images re-saved at 512 px (JPEG q70) and 92 % re-saved at
256 px, q50 and a gamma of 0.8 are near-copies, as are 99.7 % of 300 LGG FLAIR slices re-saved at 512 px;
of images the model was not developed on, 0.5 % of the held-out older adults' slices (7 of 1,287) and 0.8 %
of the 22 tumor-free probe volumes' slices (20 of 2,445; blank ones match nothing) are, nearly all at the vertex
or the skull base, where heads look alike at 48x48. Hence the sample-level rule (MIN_COPIES), not one match.
A blank image (nothing left after the head crop) has no fingerprint: every blank image would match.
"""
import functools
import hashlib
import os

import numpy as np

from screening_core import preprocessing

THUMB_SIZE = 48
BITS = 512
MAX_DISTANCE = 44  # ~ correlation 0.963 (E[d] = 512 x arccos(r) / pi: 0.95 -> 52, 0.97 -> 40, 0.9 -> 74)
MIN_COPIES = 3, 0.05  # a sample fails with at least 3 near-copies and 5 % of its images (chance: 0.5-0.8 %, below)
_SEED = 20261205
DEVELOPMENT_FILE = "development_fingerprints.npz"  # in the artifact (trainer/development_set.py)
# The preprocessing the artifacts' stored fingerprints were made with: a sample is compared with them only
# through the same one, whatever the model itself is scored with.
THUMB_PREPROCESSING = preprocessing.PREPROCESSING_IDS[0]


def thumbnail(gray):
    """Zero-mean, unit-norm thumbnail vector (head-cropped, so borders and size do not matter)."""
    spec = preprocessing.InputSpec(height=THUMB_SIZE, width=THUMB_SIZE, preprocessing=THUMB_PREPROCESSING)
    v = preprocessing.prepare(gray, spec).reshape(-1).astype(np.float64)
    v -= v.mean()
    n = np.linalg.norm(v)
    return (v / n if n > 0 else v).astype(np.float32)


@functools.cache
def projections():
    """The fixed random projections (float32[BITS, 48*48]), drawn once per process."""
    return np.random.default_rng(_SEED).standard_normal((BITS, THUMB_SIZE * THUMB_SIZE)).astype(np.float32)


def scheme():
    """What a stored fingerprint set must have been made with to compare with today's (numpy's generator
    could change its stream; a changed scheme would silently find no copy, so it is checked)."""
    return {"thumb_size": THUMB_SIZE, "bits": BITS, "max_distance": MAX_DISTANCE,
            "projections_sha256": hashlib.sha256(projections().tobytes()).hexdigest()}


def informative(thumbs):
    """Which thumbnails can be fingerprinted: a blank one (zero vector) would match every other blank."""
    return np.linalg.norm(np.asarray(thumbs, np.float32).reshape(len(thumbs), -1), axis=1) > 0


def of_thumbnails(thumbs):
    """float32[n, 48*48] thumbnails -> uint8[n, BITS/8] fingerprints."""
    return np.packbits(np.asarray(thumbs, np.float32) @ projections().T > 0, axis=1)


def nearest(queries, reference, chunk=2048):
    """(distance, index) of each query's nearest reference fingerprint (uint8[n, BITS/8] each)."""
    q = np.unpackbits(np.asarray(queries, np.uint8), axis=1).astype(np.float32) * 2 - 1
    r = np.unpackbits(np.asarray(reference, np.uint8), axis=1).astype(np.float32) * 2 - 1
    best_d = np.full(len(q), BITS + 1, np.int32)
    best_i = np.full(len(q), -1, np.int64)
    for start in range(0, len(r), chunk):
        agree = q @ r[start:start + chunk].T  # BITS - 2 x distance
        d = ((BITS - agree) / 2).round().astype(np.int32)
        i = d.argmin(axis=1)
        di = d[np.arange(len(q)), i]
        better = di < best_d
        best_d[better], best_i[better] = di[better], i[better] + start
    return best_d, best_i


def load_development(version_dir, metadata):
    """((fingerprints, collection name of each), None) of an artifact, or (None, why not)."""
    entry = metadata.get("development_fingerprints")
    if not entry:
        return None, "the model artifact carries no fingerprints of its development images"
    if {k: entry.get(k) for k in scheme()} != scheme():
        return None, "the artifact's fingerprints were made another way than this version makes them"
    path = os.path.join(version_dir, entry["file"])
    if not os.path.exists(path):
        return None, f"{entry['file']} is missing from the model artifact"
    with np.load(path) as z:
        names = [str(n) for n in z["collections"]]
        return (z["fingerprints"], [names[i] for i in z["collection"]]), None
