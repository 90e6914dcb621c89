"""Discover, scan and group labelled collections: the one way training and evaluation read their data.

Kept apart from `trainer.train` so that `trainer.evaluation` (which scores an artifact on collections)
and the training loop (which calls evaluation's metrics) do not import each other.
"""
import posixpath
import re

import numpy as np

from trainer import dedup, discovery, scan


def pattern_keys(examples, pattern):
    """First regex group of each file name (None where it does not match)."""
    if not pattern:
        return [None] * len(examples)
    rx = re.compile(pattern)
    keys = []
    for e in examples:
        m = rx.search(posixpath.basename(e.path.replace("\\", "/")))
        keys.append((m.group(1) if m.groups() else m.group(0)) if m else None)
    return keys


def load_collections(roots, cfg, class_map):
    """Discover, scan and group the images of several collections."""
    examples, notes = discovery.discover_all(roots, class_map)
    if cfg.max_images and len(examples) > cfg.max_images:
        rng = np.random.default_rng(cfg.seed)
        examples = [examples[i] for i in sorted(rng.choice(len(examples), cfg.max_images, replace=False))]
    kept, thumbs, sizes, modes, skipped, fingerprint = scan.scan(examples)
    skipped += [{"path": p, "reason": "listed in CSV but not found"} for p in notes["missing"]]
    for s in skipped:
        print(f"Skipped {s['path']}: {s['reason']}")
    groups = dedup.group_near_duplicates(thumbs, cfg.dedup_threshold)
    keys = pattern_keys(kept, cfg.group_pattern)
    for line in pattern_coverage(kept, keys, cfg.group_pattern):
        print(line)
    groups = dedup.merge_with_keys(groups, keys)
    return kept, sizes, modes, skipped, fingerprint, groups, notes


def pattern_coverage(examples, keys, pattern):
    """A warning for each collection where `pattern` names the patient of some files but not all.

    Why: a file the pattern misses is split by near-duplicate group alone, so two slices of one patient can
    land on both sides of the split and validation is optimistic without a sign. The Makefile's pattern
    missed BraTS-PEDs' `_z085.png` names for every classifier from v12 to v34 (docs/model_v4_notes.md row
    SPL2). A collection it matches nowhere (brain-mri: no patient in its names) gets a plainer line."""
    if not pattern:
        return []
    seen = {}
    for e, k in zip(examples, keys, strict=True):
        hit, total = seen.get(e.collection, (0, 0))
        seen[e.collection] = (hit + (k is not None), total + 1)
    lines = []
    for collection, (hit, total) in sorted(seen.items()):
        if hit == total:
            continue
        where = collection or "(data)"
        if hit:
            lines.append(f"Warning: --group-pattern names the patient of {hit} of {total} files in {where}; the other "
                         f"{total - hit} are split by near-duplicate group only, so one patient's slices may fall "
                         "on both sides of the split (check the pattern against those file names)")
        else:
            lines.append(f"{where}: --group-pattern matches none of its {total} files; split by near-duplicate group "
                         "(if its file names carry the patient, extend the pattern)")
    return lines
