"""Tumor-free training images that a published model flags, drawn more often in a classifier's fine-tune.

Why: the slice classifier is what raises most of v21's remaining false alarms on brain-mri (midline
sagittal T1 and coronal views at log-odds +1.4 to +2.9 while both lesion maps stay near or below 0,
docs/model_v4_notes.md row HNC). Those views are rare among tumor-free training images and common among
its tumor images (figshare's T1 with contrast), so a uniform draw keeps teaching "this view means tumor".
The lesion maps were taught the same way (`lesion_train --hard-negatives`, v8); this is the classifier's
counterpart, mined with the whole published model (ensemble included) and its own threshold, because
that is the flag a user sees.
"""
import numpy as np

BATCH = 64


def mine(artifact_dir, paths, candidates):
    """(flagged, threshold): whether each `paths[i]` with `candidates[i]` scores at or above the artifact's
    threshold (False elsewhere), read through the artifact's own input spec."""
    import tensorflow as tf

    from screening_core import artifact, preprocessing
    model, metadata = artifact.load(artifact_dir)
    spec = preprocessing.InputSpec.from_dict(metadata["input_spec"])
    threshold = float(metadata["threshold"])
    todo = np.flatnonzero(candidates)
    scores = np.full(len(paths), -np.inf)
    for start in range(0, len(todo), BATCH):
        idx = todo[start:start + BATCH]
        xs = []
        for i in idx:
            with tf.io.gfile.GFile(str(paths[i]), "rb") as f:
                xs.append(preprocessing.image_bytes_to_input(f.read(), spec))
        out = np.asarray(model.predict(np.stack(xs), verbose=0)).reshape(len(idx), -1)[:, 0]
        scores[idx] = out
    return scores >= threshold, threshold


def repeated_index(is_train, hard, factor):
    """Indices of the training examples, each hard one `factor` times (an integer >= 1), in example order.

    Repetition rather than sampling weights: the per-collection, class-balanced draw then shows a hard
    negative `factor` times as often as another tumor-free image of its collection, and the class
    balance itself is unchanged (class weights are computed on the repeated list)."""
    if int(factor) != factor or factor < 1:
        raise ValueError(f"--hard-negatives is a whole number of draws >= 1, got {factor}")
    idx = np.flatnonzero(is_train)
    return np.repeat(idx, np.where(np.asarray(hard, bool)[idx], int(factor), 1))
