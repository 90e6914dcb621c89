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
    groups = dedup.merge_with_keys(groups, pattern_keys(kept, cfg.group_pattern))
    return kept, sizes, modes, skipped, fingerprint, groups, notes
