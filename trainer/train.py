"""Training orchestration: data -> split -> fit under a strategy -> evaluate -> artifact."""
import csv
import logging
import os
import posixpath
import shutil
import tempfile
import time

import numpy as np

from screening_core import artifact, preprocessing
from trainer import dedup, discovery, distribute, eda, evaluation, input_pipeline, lesion_data, model_card, plots
from trainer.loading import load_collections, pattern_keys
from trainer.paths import join


def prepare_data(cfg):
    """Discover, scan, group and split; returns a dict used by training and the EDA.

    Split units are near-duplicate groups joined with patient keys
    (`group_pattern`); images matching `holdout_pattern` are a held-out site
    that is neither trained on nor used to choose the threshold.
    """
    class_map = {**discovery.DEFAULT_CLASS_MAP, **discovery.parse_class_map(cfg.class_map)}
    kept, sizes, modes, skipped, fingerprint, groups, notes = load_collections(cfg.data_dir, cfg, class_map)
    used = {c: class_map[c.lower()] for c in sorted({e.class_name for e in kept})
            if c.lower() in class_map}
    logging.info("layout %s; class map (1 = tumor): %s", notes["layout"], used)
    print(f"Data layout: {notes['layout']}; class mapping (1 = tumor, 0 = no tumor): {used}")
    labels = np.array([e.label for e in kept])
    if len(set(labels.tolist())) < 2:
        raise ValueError(f"need both classes to train; found labels {sorted(set(labels.tolist()))}")
    is_holdout = np.array([k is not None for k in pattern_keys(kept, cfg.holdout_pattern)], bool)
    if cfg.holdout_pattern and is_holdout.all():
        raise ValueError(f"--holdout-pattern {cfg.holdout_pattern!r} matches every image")
    # A group that touches the held-out site goes there whole.
    held_groups = np.unique(groups[is_holdout])
    is_holdout |= np.isin(groups, held_groups)
    # Each collection is split on its own (stratified by label), so every source
    # holds its share of validation, and a collection's split does not change
    # when another collection is added.
    is_val = np.zeros(len(kept), bool)
    collections = np.array([e.collection for e in kept])
    for name in sorted(set(collections.tolist())):
        rest = np.flatnonzero(~is_holdout & (collections == name))
        if len(rest):
            is_val[rest] = dedup.split_groups(groups[rest], labels[rest], cfg.val_fraction,
                                              cfg.split_seed_used())
    evaluation.threshold_rows([evaluation.source_key(e) for e, v in zip(kept, is_val, strict=True) if v],
                              labels[is_val], cfg.threshold_sources)
    report = eda.build_report(kept, sizes, modes, groups, is_val, skipped, used, is_holdout=is_holdout)
    external = None
    if cfg.eval_data_dir:
        ex, _, _, ext_skipped, _, ext_groups, _ = load_collections(cfg.eval_data_dir, cfg, class_map)
        external = dict(examples=ex, labels=np.array([e.label for e in ex]), groups=ext_groups,
                        skipped=ext_skipped)
    return dict(examples=kept, labels=labels, groups=groups, is_val=is_val, is_holdout=is_holdout,
                report=report, fingerprint=fingerprint, external=external)


def _optimizer(cfg, steps_per_epoch):
    import keras
    if cfg.lr_schedule == "cosine":
        total = max(cfg.epochs * steps_per_epoch, 2)
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=total - steps_per_epoch if total > steps_per_epoch else 1,
            warmup_target=cfg.learning_rate, warmup_steps=min(steps_per_epoch, total - 1))
    elif cfg.lr_schedule == "plateau":
        lr = cfg.learning_rate
    else:
        raise ValueError(f"--lr-schedule must be cosine or plateau, got {cfg.lr_schedule!r}")
    return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)


def _callbacks(work_dir, cfg, monitor="val_auc"):
    import keras
    plateau = [keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.3,
                                                 patience=max(2, cfg.early_stopping_patience // 2))]
    return [
        keras.callbacks.BackupAndRestore(join(work_dir, "backup")),
        keras.callbacks.ModelCheckpoint(join(work_dir, "checkpoints", "best.keras"),
                                        monitor=monitor, mode="max", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=cfg.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.TensorBoard(join(work_dir, "logs")),
        keras.callbacks.CSVLogger(join(work_dir, "training_log.csv"), append=True),
    ] + (plateau if cfg.lr_schedule == "plateau" else [])


def train(cfg, extra_callbacks=()):
    """Train per `cfg` and write the artifact; returns (version_dir, metadata)."""
    import keras
    import tensorflow as tf
    if not 0.0 <= cfg.synth_tumors <= 1.0:
        raise ValueError(f"--synth-tumors is a probability in [0, 1], got {cfg.synth_tumors}")
    if cfg.synth_tumors and cfg.lesion_weight <= 0:
        raise ValueError("--synth-tumors paints a tumor mask for the lesion head: it needs --lesion-weight > 0")
    if not 0.0 <= cfg.mirror_tumors <= 1.0:
        raise ValueError(f"--mirror-tumors is a probability in [0, 1], got {cfg.mirror_tumors}")
    if not 0.0 <= cfg.transplant_tumors <= 1.0:
        raise ValueError(f"--transplant-tumors is a probability in [0, 1], got {cfg.transplant_tumors}")
    if cfg.transplant_tumors and cfg.lesion_weight <= 0:
        raise ValueError("--transplant-tumors cuts tumors with the lesion head's masks: it needs --lesion-weight > 0")
    if cfg.transplant_axial_only and not cfg.transplant_tumors:
        raise ValueError("--transplant-axial-only says where --transplant-tumors sets tumors: it needs "
                         "--transplant-tumors > 0")
    if not 0.0 <= cfg.fluid_bright <= 1.0:
        raise ValueError(f"--fluid-bright is a probability in [0, 1], got {cfg.fluid_bright}")
    if cfg.fluid_bright and cfg.lesion_weight <= 0:
        raise ValueError("--fluid-bright keeps the tumor mask of the lesion head: it needs --lesion-weight > 0")
    if cfg.mirror_tumors and cfg.lesion_weight <= 0:
        raise ValueError("--mirror-tumors reads the tumor masks of the lesion head: it needs --lesion-weight > 0")
    strategy = distribute.get_strategy(cfg.cpu_replicas)  # before any other TF op
    keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    data = prepare_data(cfg)
    spec = preprocessing.InputSpec(height=cfg.image_size, width=cfg.image_size, preprocessing=cfg.preprocessing)
    replicas = strategy.num_replicas_in_sync
    global_batch = cfg.batch_size * replicas
    print(f"Strategy {type(strategy).__name__}: {replicas} replica(s); batch {cfg.batch_size} per "
          f"replica, {global_batch} global")
    ex, labels, is_val, is_holdout = data["examples"], data["labels"], data["is_val"], data["is_holdout"]
    is_train = ~is_val & ~is_holdout & ~_skipped_tumor_slices(cfg.skip_tumor_slices, ex, labels)
    paths = np.array([e.path for e in ex])
    sources = np.array([e.collection for e in ex])
    n_train = int(is_train.sum())
    steps_per_epoch = int(np.ceil(n_train / global_batch))
    balanced = cfg.balance_sources and len(set(sources[is_train].tolist())) > 1
    lesion = cfg.lesion_weight > 0
    train_idx = _training_index(cfg, paths, labels, sources, is_train)
    val_ds = input_pipeline.make_dataset(paths[is_val], labels[is_val], spec, global_batch, training=False)
    if lesion:
        train_ds, fit_val_ds = _lesion_datasets(cfg, ex, paths, labels, sources, is_train, train_idx, is_val,
                                                spec, global_batch)
    else:
        fit_val_ds = val_ds
        if balanced:
            train_ds = input_pipeline.make_balanced_dataset(
                paths[train_idx], labels[train_idx], sources[train_idx], spec, global_batch, seed=cfg.seed,
                augment_mode=cfg.augment, shares=cfg.shares())
        else:
            train_ds = input_pipeline.make_dataset(
                paths[train_idx], labels[train_idx], spec, global_batch, training=True, seed=cfg.seed,
                weights=input_pipeline.class_weights(labels[train_idx]), augment_mode=cfg.augment)
    with strategy.scope():
        from trainer.model import make_model, with_lesion_head
        model = make_model((spec.height, spec.width, 1), base_filters=cfg.base_filters)
        if cfg.init_from:
            _start_from(model, cfg.init_from)
        auc = [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
        if lesion:
            fit_model = with_lesion_head(model)
            fit_model.compile(optimizer=_optimizer(cfg, steps_per_epoch),
                              loss={"tumor_probability": "binary_crossentropy",
                                    "lesion_map": "binary_crossentropy"},
                              loss_weights={"tumor_probability": 1.0, "lesion_map": cfg.lesion_weight},
                              metrics={"tumor_probability": auc})
        else:
            fit_model = model
            model.compile(optimizer=_optimizer(cfg, steps_per_epoch), loss="binary_crossentropy", metrics=auc)
    monitor = "val_tumor_probability_auc" if lesion else "val_auc"
    # Chosen before training: an interrupted run (no artifact yet) gets the same
    # version, hence the same work dir and backup, when it is started again.
    version = cfg.version or str(artifact.next_version(join(cfg.model_dir, cfg.name)))
    _refuse_existing(join(cfg.model_dir, cfg.name, version))  # before hours of training, not after
    work_dir = join(cfg.model_dir, cfg.name, "_work", version)
    if not cfg.resume and tf.io.gfile.exists(join(work_dir, "backup")):
        tf.io.gfile.rmtree(join(work_dir, "backup"))
    t0 = time.time()
    history = fit_model.fit(train_ds, validation_data=fit_val_ds, epochs=cfg.epochs,
                            steps_per_epoch=steps_per_epoch if balanced else None,
                            callbacks=_callbacks(work_dir, cfg, monitor) + list(extra_callbacks), verbose=2)
    fit_seconds = time.time() - t0
    epochs_run = len(history.history.get("loss", []))

    scored = [("validation", np.flatnonzero(is_val), _predict(model, val_ds), ex, labels, data["groups"])]
    if is_holdout.any():
        idx = np.flatnonzero(is_holdout)
        scored.append(("held_out_site", idx, _predict(model, input_pipeline.make_dataset(
            paths[idx], labels[idx], spec, global_batch, training=False)), ex, labels, data["groups"]))
    external = data["external"]
    if external and external["examples"]:
        e_paths = np.array([e.path for e in external["examples"]])
        scored.append(("external", np.arange(len(e_paths)), _predict(model, input_pipeline.make_dataset(
            e_paths, external["labels"], spec, global_batch, training=False)),
            external["examples"], external["labels"], external["groups"]))
    rows = _scored_rows(scored)
    m = evaluation.operating_metrics(rows, cfg.target_sensitivity, cfg.threshold_sources, cfg.bootstrap)
    from trainer.model import flops_per_image
    fields = dict(
        name=cfg.name, version=version, input_spec=spec, class_names=["no_tumor", "tumor"],
        threshold=m["threshold"], target_sensitivity=cfg.target_sensitivity, validation_metrics=m,
        data_fingerprint=data["fingerprint"], training_config=cfg.to_dict(),
        extra={"training": {"replicas": replicas, "global_batch_size": global_batch,
                            "strategy": type(strategy).__name__, "epochs_run": epochs_run,
                            "fit_seconds": round(fit_seconds, 1),
                            "train_images_per_second": round(epochs_run * n_train / fit_seconds, 1),
                            "balanced_sources": bool(balanced),
                            "params": int(model.count_params()),
                            "flops_per_image": flops_per_image(model)}})
    final_dir = join(cfg.model_dir, cfg.name, version)
    local_dir = final_dir if not final_dir.startswith("gs://") else tempfile.mkdtemp()
    _refuse_existing(final_dir)
    metadata = artifact.write_artifact(model, local_dir, fields)
    _write_extras(local_dir, metadata, data, rows)
    if final_dir.startswith("gs://"):
        _upload(local_dir, final_dir)
        shutil.rmtree(local_dir)
    print(f"Artifact written to {final_dir}: AUC {m['roc_auc']:.4f}, threshold {m['threshold']:.4f}, "
          f"sensitivity {m['sensitivity']:.4f}, specificity {m['specificity']:.4f}")
    return final_dir, metadata


def _skipped_tumor_slices(spec, examples, labels):
    """Tumor-labelled examples of the --skip-tumor-slices folders ('collection/sequence,...').

    Why: LGG's T1 slices carry the FLAIR mask's label, and a lower-grade glioma is often invisible on T1, so a
    "tumor" label there may have nothing to see. Measured (docs/model_v4_notes.md row T1N): leaving them out of
    v20's recipe did not move v21's false alarms on LGG's mid-level T1 after contrast, which come from the
    normal enhancement of veins, falx and sinus, not from these labels."""
    wanted = {s.strip() for s in spec.split(",") if s.strip()}
    folder = np.array([f"{e.collection}/{e.sequence}" for e in examples])
    unknown = wanted - set(folder.tolist())
    if unknown:
        raise ValueError(f"--skip-tumor-slices: no training folder {sorted(unknown)} (have {sorted(set(folder.tolist()))})")
    skip = np.isin(folder, sorted(wanted)) & (np.asarray(labels) == 1)
    if wanted:
        print(f"Skipped {int(skip.sum())} tumor-labelled slices of {', '.join(sorted(wanted))}", flush=True)
    return skip


def _training_index(cfg, paths, labels, sources, is_train):
    """Indices of the training examples in draw order, the hard negatives repeated (--hard-negatives)."""
    from trainer import hard_negatives
    if cfg.hard_negatives <= 1:
        return np.flatnonzero(is_train)
    candidates = is_train & (labels == 0)
    if cfg.hard_negatives_in:
        wanted = {c.strip() for c in cfg.hard_negatives_in.split(",")}
        unknown = wanted - set(sources[is_train].tolist())
        if unknown:
            raise ValueError(f"--hard-negatives-in: not a training collection: {sorted(unknown)}")
        candidates &= np.isin(sources, sorted(wanted))
    hard, threshold = hard_negatives.mine(cfg.hard_negatives_from, paths, candidates)
    print(f"Hard negatives: {int(hard.sum())} of {int(candidates.sum())} tumor-free training "
          f"images score >= {threshold:.4f} with {cfg.hard_negatives_from}; drawn {cfg.hard_negatives}x as often",
          flush=True)
    return hard_negatives.repeated_index(is_train, hard, cfg.hard_negatives)


def _lesion_datasets(cfg, ex, paths, labels, sources, is_train, train_idx, is_val, spec, global_batch):
    """(train, validation) datasets that also carry lesion targets for the lesion head; the training one
    draws the examples of `train_idx` (the training examples, hard negatives repeated)."""
    masks, extents = (np.array(a) for a in _mask_specs(ex, cfg.data_dir, cfg.mask_sequence, cfg.masks_dirs()))
    n_masks = int(sum(m not in (input_pipeline.MASK_UNKNOWN, input_pipeline.MASK_EMPTY) for m in masks))
    print(f"Lesion supervision: {n_masks} tumor masks, "
          f"{int((masks == input_pipeline.MASK_EMPTY).sum())} known-empty slices")
    if not n_masks:
        raise ValueError("--lesion-weight needs a masks/ folder in a sequence-folder collection")
    from trainer import augment
    level = np.nan_to_num(lesion_data.stack_levels(ex), nan=1.0)  # NaN (no stack: brain-mri) counts as eligible
    sequences = [e.sequence for e in ex]
    synth = None
    if cfg.synth_tumors:
        p, kind = augment.synthesis_plan(sequences, labels, np.ones(len(ex)), level, cfg.synth_tumors)
        synth = (p[train_idx], kind[train_idx])
        print(f"Synthetic tumors: {int(np.count_nonzero(synth[0]))} tumor-free training slices may get one")
    transplant = None
    if cfg.transplant_tumors:
        p, _ = augment.synthesis_plan(sequences, labels, np.ones(len(ex)), level, cfg.transplant_tumors,
                                      kinds=("bright", "bright-or-enhancing"),  # the donors are FLAIR/T2 tumors
                                      planes=("axial",) if cfg.transplant_axial_only else None)
        known = ~np.isin(masks, (input_pipeline.MASK_UNKNOWN, input_pipeline.MASK_EMPTY))
        donor = is_train & (labels == 1) & known & np.isin(sequences, ("flair", "t2"))
        bank = input_pipeline.load_donors(paths[donor], masks[donor], spec)
        transplant = (p[train_idx], *bank)
        print(f"Transplanted tumors: {int(np.count_nonzero(transplant[0]))} tumor-free training slices may get "
              f"one of {len(bank[0])} FLAIR/T2 training tumors")
    mirror = None
    if cfg.mirror_tumors:  # where the tumor is, from a mask drawn on any sequence of the slice
        mirror = (extents[train_idx], cfg.mirror_tumors)
        print(f"Mirrored pairs: {int(np.count_nonzero(extents[is_train]))} tumor training slices with a mask "
              f"may be mirrored (those with the tumor in one half of a symmetric head)")
    fluid = None
    if cfg.fluid_bright:  # FLAIR is T2 with the fluid nulled: its slices, with their masks, become T2-like
        from screening_core import looks
        fluid = np.where([looks.look_of(s or "") == "flair" for s in sequences], cfg.fluid_bright, 0.0)[train_idx]
        print(f"T2-like: {int(np.count_nonzero(fluid))} FLAIR training slices may have their fluid made bright")
    train_ds = input_pipeline.make_lesion_dataset(
        paths[train_idx], labels[train_idx], masks[train_idx], sources[train_idx], spec, global_batch, True,
        seed=cfg.seed, augment_mode=cfg.augment, balanced=cfg.balance_sources, synth=synth, shares=cfg.shares(),
        mirror=mirror, transplant=transplant, fluid=fluid)
    val_ds = input_pipeline.make_lesion_dataset(
        paths[is_val], labels[is_val], masks[is_val], sources[is_val], spec, global_batch, False)
    return train_ds, val_ds


def _mask_specs(examples, roots, mask_sequence, masks_dirs=None):
    """(lesion-head mask spec, tumor extent) per example, from one listing of the mask folders.

    The spec is the tumor's mask path, MASK_EMPTY (a negative of a collection with masks) or MASK_UNKNOWN:
    a collection's `masks/` folder holds masks named like the images of the `mask_sequence` folder they
    were drawn on (LGG: FLAIR). Negatives of such a collection are known to be lesion-free in every
    sequence; positives of other sequences stay unknown (LGG's T1 lesions are often invisible).
    `masks_dirs` ({collection: folder}) adds masks drawn on the very slices they are named after.
    The extent is the mask of every tumor slice that has one, whatever its sequence, "" elsewhere: it
    says where the tumor is (`augment.mirror_pair`), not what this sequence shows of it.
    """
    import tensorflow as tf
    by_name = {}
    for root in roots:
        mdir = join(root, "masks")
        if tf.io.gfile.isdir(mdir):
            by_name[discovery.collection_name(root)] = (
                mdir, {os.path.splitext(f)[0]: f for f in tf.io.gfile.listdir(mdir)})
    drawn_on_each = set()
    for name, mdir in (masks_dirs or {}).items():
        if name in by_name:
            raise ValueError(f"collection {name} already has a masks/ folder; --masks-dir would shadow it")
        by_name[name] = (mdir, {os.path.splitext(f)[0]: f for f in tf.io.gfile.listdir(mdir)
                                if f.lower().endswith(".png")})
        drawn_on_each.add(name)
    specs, extents = [], []
    for e in examples:
        mdir, files = by_name.get(e.collection, ("", {}))
        found = files.get(os.path.splitext(posixpath.basename(e.path.replace("\\", "/")))[0])
        extent = join(mdir, found) if found and e.label == 1 else ""
        extents.append(extent)
        if not mdir:
            specs.append(input_pipeline.MASK_UNKNOWN)
        elif e.label == 0:
            specs.append(input_pipeline.MASK_EMPTY)
        elif extent and (e.sequence == mask_sequence or e.collection in drawn_on_each):
            specs.append(extent)
        else:
            specs.append(input_pipeline.MASK_UNKNOWN)
    return specs, extents


def _start_from(model, path):
    """Copy the weights of the model.keras at `path` into `model` (same architecture and input)."""
    import keras
    source = keras.saving.load_model(path, compile=False)
    try:
        model.set_weights(source.get_weights())
    except ValueError as e:
        raise ValueError(f"--init-from {path}: not this architecture or input size ({e})") from None
    print(f"Started from the weights of {path}")


def _refuse_existing(final_dir):
    """A published version (local or gs://) is never overwritten."""
    import tensorflow as tf
    if tf.io.gfile.exists(join(final_dir, artifact.METADATA_FILE)) or (
            not final_dir.startswith("gs://") and os.path.exists(final_dir)):
        raise FileExistsError(f"{final_dir} already exists; a published version is never overwritten: "
                              "pick another --version")


def _predict(model, ds):
    return model.predict(ds, verbose=0)[:, 0].astype(np.float64)


def _scored_rows(scored):
    """One dict per scored image (the columns of validation_predictions.csv)."""
    rows = []
    for split, idx, scores, exs, labs, grps in scored:
        for i, score in zip(idx, scores, strict=True):
            rows.append({"path": exs[i].path, "class_name": exs[i].class_name, "label": int(labs[i]),
                         "group": int(grps[i]), "score": float(score), "split": split,
                         "source": evaluation.source_key(exs[i])})
    return rows


PREDICTION_COLUMNS = ["path", "class_name", "label", "group", "score", "split", "source"]


def _write_extras(out_dir, metadata, data, rows):
    """EDA, plots, the model card and every scored row (validation, held-out site, external)."""
    eda.write_report(data["report"], os.path.join(out_dir, "eda"))
    val = [r for r in rows if r["split"] == "validation"]
    plots.write_plots(np.array([r["label"] for r in val]), np.array([r["score"] for r in val]),
                      metadata["threshold"], out_dir)
    with open(os.path.join(out_dir, artifact.PREDICTIONS_FILE), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(PREDICTION_COLUMNS)
        for r in rows:
            w.writerow([r[c] if c != "score" else repr(r[c]) for c in PREDICTION_COLUMNS])
    with open(os.path.join(out_dir, artifact.MODEL_CARD_FILE), "w") as f:
        f.write(model_card.render(metadata, data["report"]))


def _upload(local_dir, remote_dir):
    import tensorflow as tf
    for root, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            dst = posixpath.join(remote_dir, os.path.relpath(src, local_dir).replace(os.sep, "/"))
            tf.io.gfile.makedirs(posixpath.dirname(dst))
            tf.io.gfile.copy(src, dst, overwrite=False)
