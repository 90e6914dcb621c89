"""Out-of-distribution guard: is an image like the ones the model was trained on?

A classifier asked about a CT slice, a photo or an MRI sequence it never saw
still returns a probability, often a low one, which a screening list would
read as "no tumor". The guard measures how far an image lies from the
training images, per feature set (the pooled activations of every block and
of the last convolution, and the intensity histogram of the model input): the
Mahalanobis distance to the nearer class mean under one shared covariance
(Lee et al., NeurIPS 2018), with Ledoit-Wolf shrinkage so that covariances
fitted on a few thousand images stay well conditioned. Each distance is
divided by its validation quantile and the sum is the `ood_score`. The
threshold is a quantile of the scores of one half of the validation set (the
reference is fitted on the training split only); the false-OOD rate stored
with it is measured on the other half.

The method was chosen by measurement (`python -m trainer.ood measure`, table
in docs/new_site.md): the last layer alone (AUROC 0.82 on generated CT-like
heads, 0.79 on resliced sagittal/coronal views) and the maximum-probability
baseline (0.91 / 0.79; 0.63 on photos) miss what the sum over every block's
pooled activations plus the input's intensity histogram catches (0.95 / 0.91;
0.98 on photos). The reference lives in the artifact as `ood_reference.npz`,
sealed by SHA256SUMS.

  python -m trainer.ood build models/brain-tumor-cnn/3   # data dirs from its training_config
"""
import argparse
import json
import os

import numpy as np

from screening_core.ood import (  # noqa: F401  (the runtime half, re-exported for the CLI)
    HISTOGRAM,
    REFERENCE_FILE,
    SCORE_BINS,
    Component,
    Reference,
    feature_model,
    input_histogram,
    layer_names,
    reference_path,
    split_outputs,
)
from trainer import HelpFormatter, artifact_data
from trainer.artifact_data import read_inputs

DEFAULT_VALIDATION_FALSE_OOD = 0.04  # threshold quantile on one half of validation; < 5 % on the other


def ledoit_wolf(x):
    """Shrunk covariance of centred rows `x` (Ledoit & Wolf 2004, the estimator scikit-learn uses)."""
    n, d = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta = np.sum((s - mu * np.eye(d)) ** 2) / d
    beta = np.sum((x ** 2).T @ (x ** 2) / n - s ** 2) / (n * d)
    shrink = min(beta, delta) / delta if delta > 0 else 1.0
    return (1 - shrink) * s + shrink * mu * np.eye(d), shrink


def fit_component(name, features, labels):
    x, y = np.asarray(features, np.float64), np.asarray(labels)
    classes = sorted(set(y.tolist()))
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = np.concatenate([x[y == c] - means[i] for i, c in enumerate(classes)])
    cov, _ = ledoit_wolf(centred)
    return Component(name, means, np.linalg.pinv(cov))


def fit(train, train_labels, val, val_groups, false_ood=DEFAULT_VALIDATION_FALSE_OOD, seed=0):
    """Reference from training features; scales and threshold from validation half A; check on half B.

    `train`/`val` map component name -> features. Validation is halved by group
    (patient / near-duplicate group), so the reported false-OOD rate is measured
    on images the threshold never saw.
    """
    comps = [fit_component(name, train[name], train_labels) for name in train]
    groups = np.asarray(val_groups)
    uniq = np.unique(groups)
    half_a = np.isin(groups, np.random.default_rng(seed).permutation(uniq)[: len(uniq) // 2])
    for c in comps:
        c.scale = float(np.quantile(c.distance(val[c.name][half_a]), 1 - false_ood)) or 1.0
    ref = Reference(comps, np.inf)
    scores = ref.score(val)
    ref.threshold = float(np.quantile(scores[half_a], 1 - false_ood))
    ref.info = {"method": "mahalanobis-sum-of-layers+input-histogram", "components": ref.names,
                "n_train": int(len(train_labels)), "n_validation_threshold": int(half_a.sum()),
                "n_validation_check": int((~half_a).sum()),
                "validation_false_ood_rate": float(np.mean(scores[~half_a] > ref.threshold))}
    return ref


def features_of(inputs, model, batch=64):
    """(probabilities, {component: features}) of preprocessed model inputs."""
    fm, names = feature_model(model), layer_names(model)
    probs, feats = [], []
    for i in range(0, len(inputs), batch):
        x = np.stack(inputs[i:i + batch])
        p, f = split_outputs(names, fm.predict_on_batch(x), x)
        probs.append(p)
        feats.append(f)
    return np.concatenate(probs), {k: np.concatenate([f[k] for f in feats]) for k in feats[0]}


def training_images(version_dir, metadata):
    """(paths, labels) the model was trained on: its data dirs minus every scored (non-training) row."""
    from trainer import discovery
    cfg = metadata["training_config"]
    roots = cfg["data_dir"] if isinstance(cfg["data_dir"], list) else [cfg["data_dir"]]
    scored = {os.path.normpath(r["path"]) for r in artifact_data.split_rows(version_dir)}
    examples, _ = discovery.discover_all(roots)
    keep = [e for e in examples if os.path.normpath(e.path) not in scored]
    return [e.path for e in keep], np.array([e.label for e in keep])


def build(version_dir, max_train=None, seed=0):
    """Fit the reference for the artifact in `version_dir`, write it, record it in metadata, re-seal."""
    from screening_core import artifact, preprocessing
    model, metadata = artifact.load(version_dir)
    spec = preprocessing.InputSpec.from_dict(metadata["input_spec"])
    paths, labels = training_images(version_dir, metadata)
    if max_train and len(paths) > max_train:
        pick = np.random.default_rng(seed).choice(len(paths), max_train, replace=False)
        paths, labels = [paths[i] for i in pick], labels[pick]
    val = [r for r in artifact_data.split_rows(version_dir) if r["split"] == "validation"]
    _, train_feats = features_of(read_inputs(paths, spec), model)
    val_probs, val_feats = features_of(read_inputs([r["path"] for r in val], spec), model)
    ref = fit(train_feats, labels, val_feats, [f"{r['source']}/{r['group']}" for r in val])
    attach(version_dir, ref, val_probs)
    return ref


# (a test holds them equal; an artifact whose histogram has another length gets no drift verdict)


def attach(version_dir, ref, validation_probabilities):
    """Store `ref` in the artifact: the .npz, metadata["ood"] and the drift reference; then re-seal."""
    from screening_core import artifact
    ref.score_histogram = np.histogram(validation_probabilities, bins=SCORE_BINS, range=(0, 1))[0]
    ref.save(reference_path(version_dir))
    # An ONNX graph exported before this reference lacks the feature outputs it needs: export again.
    stale_onnx = (artifact.read_metadata(version_dir).get("engines") or {}).get("onnxruntime")

    def add_reference(metadata):
        metadata["ood"] = {"file": REFERENCE_FILE, **ref.info, "threshold": ref.threshold}
        metadata["reference_score_histogram"] = [int(v) for v in ref.score_histogram]
        (metadata.get("engines") or {}).pop("onnxruntime", None)
    artifact.update_metadata(version_dir, add_reference)
    if stale_onnx:
        from trainer import export
        export.export(version_dir)


def _auroc(in_scores, out_scores):
    from screening_core import metrics
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(metrics.roc_auc(labels, np.r_[in_scores, out_scores]))


def measure(version_dir, brats_root=None, extra=()):
    """AUROC of OOD-vs-validation per case, for the Mahalanobis score and the max-probability baseline.

    `extra`: (name, folder) pairs of further collections the model never trained on.
    """
    from screening_core import artifact, preprocessing
    from trainer import ood_cases
    model, metadata = artifact.load(version_dir)
    spec = preprocessing.InputSpec.from_dict(metadata["input_spec"])
    ref = Reference.load(reference_path(version_dir))

    def scores(inputs):
        p, f = features_of(inputs, model)
        return ref.score(f), -np.abs(p - 0.5)  # baseline: closeness to 0.5 = low confidence

    val = [r["path"] for r in artifact_data.split_rows(version_dir) if r["split"] == "validation"]
    in_maha, in_conf = scores(read_inputs(val, spec))
    cases = {"CT-like head slices (generated)": ood_cases.ct_like(),
             "body CT (pydicom CT_small, crops/rotations)": ood_cases.ct_small_dicom(),
             "photos and graphics (matplotlib samples, crops/rotations)": ood_cases.photos(),
             "sagittal MRI (matplotlib s1045)": ood_cases.sagittal_mri()}
    if brats_root:
        cases["sagittal/coronal views resliced from BraTS"] = ood_cases.resliced(brats_root)
        cases["BraTS axial slices (collection never trained on)"] = ood_cases.axial_folder(brats_root)
    for name, folder in extra:
        cases[f"{name} (collection never trained on)"] = ood_cases.axial_folder(folder)
    rows = [{"case": "validation (in distribution)", "n": len(val),
             "flagged_ood": round(float(np.mean(in_maha > ref.threshold)), 4)}]
    for name, rasters in cases.items():
        maha, conf = scores([preprocessing.prepare(r, spec) for r in rasters])
        rows.append({"case": name, "n": len(rasters), "auroc_mahalanobis": round(_auroc(in_maha, maha), 4),
                     "auroc_max_probability": round(_auroc(in_conf, conf), 4),
                     "flagged_ood": round(float(np.mean(maha > ref.threshold)), 4)})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.ood", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fit and store the reference of an artifact (needs its training data)")
    b.add_argument("artifact")
    b.add_argument("--max-train", type=int, default=None, help="subsample the training images")
    m = sub.add_parser("measure", help="AUROC of the guard on images the model was not made for")
    m.add_argument("artifact")
    m.add_argument("--brats", default=None, help="the shared BraTS sample (resliced views, unseen collection)")
    m.add_argument("--extra", action="append", default=[], metavar="NAME=FOLDER",
                   help="another collection the model never trained on; repeatable")
    m.add_argument("--record", action="store_true",
                   help="store the table in metadata.json (ood.evaluation) and re-seal")
    args = parser.parse_args(argv)
    if args.command == "build":
        ref = build(args.artifact, args.max_train)
        print(json.dumps({**ref.info, "threshold": ref.threshold}, indent=2))
        return 0
    rows = measure(args.artifact, args.brats, [tuple(e.split("=", 1)) for e in args.extra])
    print(f"{'case':62s} {'n':>5s} {'AUROC maha':>10s} {'AUROC maxp':>10s} {'OOD share':>9s}")
    for r in rows:
        print(f"{r['case']:62s} {r['n']:5d} {r.get('auroc_mahalanobis', float('nan')):10.3f} "
              f"{r.get('auroc_max_probability', float('nan')):10.3f} {r['flagged_ood']:9.3f}")
    if args.record:
        from screening_core import artifact
        metadata = artifact.update_metadata(args.artifact, lambda md: md["ood"].update(evaluation=rows))
        eda_path = os.path.join(args.artifact, "eda", "eda.json")
        if os.path.exists(eda_path):
            from trainer import model_card
            with open(eda_path) as f:
                eda = json.load(f)
            with open(os.path.join(args.artifact, artifact.MODEL_CARD_FILE), "w") as f:
                f.write(model_card.render(metadata, eda))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
