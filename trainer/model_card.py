"""Render model_card.md from an artifact's metadata (one template, all models)."""


def _pct(x):
    return f"{100 * x:.1f}%"


def render(metadata, eda):
    m = metadata["validation_metrics"]
    ci = m.get("ci95", {})

    def with_ci(key):
        v = f"{m[key]:.4f}" if key == "roc_auc" else _pct(m[key])
        if key in ci or (key == "roc_auc" and "auc" in ci):
            lo, hi = ci["auc" if key == "roc_auc" else key]
            v += f" (95% CI {lo:.4f}-{hi:.4f})" if key == "roc_auc" else f" (95% CI {_pct(lo)}-{_pct(hi)})"
        return v

    per_type = "\n".join(f"| {c} | {_pct(s)} | {n} |" for c, (s, n) in
                         sorted(m.get("sensitivity_by_class", {}).items()))
    cfg = metadata["training_config"]
    spec = metadata["input_spec"]
    cm = m["confusion_matrix"]
    return f"""# Model card: {metadata['name']} v{metadata['version']}

## Intended use
A **screening aid** that scores 2-D brain MRI slices for the presence of a tumor
so that a radiologist can prioritise studies. It is a research model and **not a
diagnostic device**: it must not be used to rule out disease or to make treatment
decisions, and every flagged or unflagged study still needs a radiologist's read.

## Model
- From-scratch CNN (no pretrained weights), input {spec['height']}x{spec['width']}x{spec['channels']}
  {spec['dtype']}, preprocessing `{spec['preprocessing']}` (head crop, square canvas,
  per-image percentile intensity normalisation).
- Output: probability of tumor (glioma, meningioma or pituitary vs no tumor).
- Framework: TensorFlow {metadata['framework']['tensorflow']}, Keras {metadata['framework']['keras']};
  `model.keras` sha256 `{metadata['model_sha256']}`.

## Training data
- {eda['n_images']} images from `{cfg['data_dir']}`; classes {eda['counts_per_class']}
  ({_pct(eda['binary_balance']['tumor_fraction'])} tumor).
- Near-duplicate groups: {eda['near_duplicate_groups']} (thumbnail correlation >= {cfg['dedup_threshold']});
  split by group, {eda['groups_crossing_split']} groups cross train/validation.
- Split: {eda['split']['train']} train / {eda['split']['validation']} validation (seed {cfg['seed']}).
- Skipped unreadable files: {len(eda['skipped_files'])}.
- Data fingerprint: `{metadata['data_fingerprint']}`.

## Validation metrics (group-held-out validation split, n={m['n']})
| metric | value |
|---|---|
| ROC AUC | {with_ci('roc_auc')} |
| sensitivity @ threshold | {with_ci('sensitivity')} |
| specificity @ threshold | {with_ci('specificity')} |
| accuracy @ threshold | {_pct(m['accuracy'])} |
| expected calibration error | {m['expected_calibration_error']:.4f} |
| confusion (tp/fp/tn/fn) | {cm['tp']}/{cm['fp']}/{cm['tn']}/{cm['fn']} |

Sensitivity by tumor type at the operating threshold:

| class | sensitivity | n |
|---|---|---|
{per_type}

## Operating threshold
`{metadata['threshold']:.4f}`: the highest threshold that reaches the target sensitivity of
{_pct(metadata['threshold_target_sensitivity'])} on validation, which gives the best specificity
at that sensitivity. A screening aid should miss few tumors; false positives cost a second look.
Plots: `roc.png`, `calibration.png`.

## Limitations
- 2-D slices only; no study-level context. The pipeline aggregates per study separately.
- Source confound: in public sets negatives and positives come largely from different
  collections; the model can learn collection style (contrast, borders, JPEG artefacts).
  Preprocessing and augmentation work against it, but validation on the same collections
  cannot prove it is gone: validate on local data before use.
- Trained on JPEG slices; DICOM inputs are windowed and normalised to a comparable range but
  differ from the training distribution.
- Validation numbers come from one group split of one public data set.

## Retrain on local data
`make train DATA=<folder with class folders, Training/Testing parents, or a CSV index> MODEL_DIR=models`
or `python -m trainer.task --data-dir <folder> --model-dir models --epochs {cfg['epochs']} --seed {cfg['seed']}
--target-sensitivity {cfg['target_sensitivity']}` (see `python -m trainer.task --help`). The new artifact gets
the next version number; point the pipeline at it with `--model <model-dir>/{metadata['name']}/<version>`.
"""
