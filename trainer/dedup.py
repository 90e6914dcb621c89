"""Group near-duplicate images so that a split never separates them.

Public MRI sets contain re-saved copies and adjacent slices of one patient.
Splitting images at random puts near-copies on both sides and overstates
accuracy, so images are linked when the Pearson correlation of their small,
normalised thumbnails reaches a threshold, and the connected components become
the units of the split.
"""
import numpy as np

from screening_core import fingerprint

THUMB_SIZE = fingerprint.THUMB_SIZE
DEFAULT_THRESHOLD = 0.95
thumbnail = fingerprint.thumbnail  # one thumbnail: the split's near-duplicates are the artifact's near-copies


class _UnionFind:
    def __init__(self, n):
        self.parent = np.arange(n)

    def find(self, i):
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_near_duplicates(thumbs, threshold=DEFAULT_THRESHOLD, block=1024):
    """Group id per row of `thumbs` (N x D unit vectors); ids are 0..G-1.

    Correlations are computed block by block, so memory is O(block * N).
    """
    thumbs = np.asarray(thumbs, dtype=np.float32)
    n = len(thumbs)
    uf = _UnionFind(n)
    for start in range(0, n, block):
        corr = thumbs[start:start + block] @ thumbs.T
        rows, cols = np.nonzero(corr >= threshold)
        for r, c in zip(rows + start, cols, strict=True):
            if c > r:
                uf.union(r, c)
    roots = np.array([uf.find(i) for i in range(n)])
    _, ids = np.unique(roots, return_inverse=True)
    return ids


def split_groups(group_ids, labels, val_fraction, seed):
    """Boolean validation mask: whole groups, stratified by label, seeded.

    A group's stratum is its majority label. Groups are visited in a seeded
    random order and added to validation until each stratum holds its share.
    """
    group_ids = np.asarray(group_ids)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), bool)
    groups = np.unique(group_ids)
    members = {g: np.flatnonzero(group_ids == g) for g in groups}
    stratum = {g: int(round(labels[m].mean() + 1e-9)) for g, m in members.items()}
    for s in sorted(set(stratum.values())):
        gs = np.array([g for g in groups if stratum[g] == s])
        rng.shuffle(gs)
        target = val_fraction * sum(len(members[g]) for g in gs)
        taken = 0
        for g in gs:
            if taken >= target:
                break
            if taken + len(members[g]) > target * 1.05 and taken > 0:
                continue  # skip a group that would overshoot; a smaller one may fit
            is_val[members[g]] = True
            taken += len(members[g])
    return is_val


def merge_with_keys(group_ids, keys):
    """Split units: the patient key where an image has one, its near-duplicate group otherwise.

    Near-duplicate links are not followed across patient keys: slices of
    different patients at the same level look alike at 48x48 (in LGG, linking
    them chained 4,135 slices of ~40 patients into one group), while a patient
    key is exact. Images without a key keep their near-duplicate groups.
    """
    group_ids = np.asarray(group_ids)
    out = group_ids.copy()
    offset = int(group_ids.max()) + 1 if len(group_ids) else 0
    key_ids = {}
    for i, k in enumerate(keys):
        if k:
            out[i] = offset + key_ids.setdefault(k, len(key_ids))
    return out  # ids of keyless images are unchanged, so their split is as without keys
