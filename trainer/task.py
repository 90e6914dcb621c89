"""Entry point (Vertex AI custom-job style): flags in, a validated artifact out.

  python -m trainer.task --data-dir ../shared/data/brain-mri --model-dir models --epochs 30
"""
import argparse
import dataclasses
import logging
import os
import sys

from screening_core.preprocessing import PREPROCESSING_IDS
from trainer import HelpFormatter
from trainer.config import AUGMENT_MODES, TrainConfig, parse_masks_dirs

_HELP = {
    "data_dir": "folder of labelled images (class folders, Training/Testing parents, MRI-sequence folders "
                "or a CSV index); local or gs://; repeat for several collections",
    "eval_data_dir": "labelled collection that is only scored, never trained on (cross-collection "
                     "check); repeatable",
    "group_pattern": "regex on the file name whose first group is a patient key: images with the same "
                     "key stay on one side of the split (e.g. 'TCGA_[A-Z0-9]+_[A-Z0-9]+'); "
                     "near-duplicate groups always apply",
    "holdout_pattern": "regex on the file name; matching images are held out entirely as an unseen "
                       "site and reported separately (e.g. 'TCGA_FG_')",
    "augment": "'v2': geometry and photometrics; 'contrast': plus tissue-contrast remapping, "
               "inversion and bias field; 'contrast-strip': plus imitated skull stripping; "
               "'contrast-strip-prepared': the stripped brain then stretched as prepare() stretches one",
    "balance_sources": "draw every training batch equally from each collection",
    "lesion_weight": "> 0: a training-only head also learns the tumor masks of collections with a masks/ "
                     "folder (loss weight); the exported model is unchanged in shape",
    "mask_sequence": "sequence folder whose images the masks/ were drawn on",
    "transplant_axial_only": "with --transplant-tumors: set tumors only into axial slices (every folder that does "
                             "not name a sagittal or coronal plane): the donors are axial tumors",
    "synth_tumors": "with --lesion-weight: probability that a tumor-free training slice above the skull base "
                    "gets a synthetic tumor painted into it (augment.synthetic_tumor) and trains as a tumor "
                    "slice with that mask: a tumor at every level, in every sequence and on every source",
    "transplant_tumors": "with --lesion-weight: probability that a FLAIR, T2 or unknown-sequence tumor-free training "
                         "slice above the skull base gets a real tumor, cut with its mask from a FLAIR/T2 training "
                         "tumor slice (augment.transplant_tumor), and trains as a tumor slice (before any painting)",
    "fluid_bright": "with --lesion-weight: probability that a FLAIR training slice (tumor or not) is made T2-like "
                    "(augment.bright_fluid: the fluid inside the brain turns bright; label and mask kept): healthy "
                    "T2 heads, whose bright ventricles and sulci the classifier reads as lesion, at every level",
    "mirror_tumors": "with --lesion-weight: probability that a tumor slice whose mask lies in one half of a "
                     "symmetric head is mirrored (augment.mirror_pair): half the time its healthy half over its "
                     "tumor half (a tumor-free slice at the tumor's own level, sequence and source), half the time "
                     "the other way (a tumor on both sides)",
    "masks_dir": "COLLECTION=DIR: tumor masks kept outside a collection (named like its tumor slices, drawn on "
                 "them, e.g. brain-mri's figshare borders from trainer.figshare_masks); with --lesion-weight the "
                 "lesion head learns them, and that collection's tumor-free slices as all-negative maps; repeatable",
    "source_shares": "with --balance-sources: each collection's share of a training batch, e.g. "
                     "'brain-mri=0.5,lgg=0.35,brats-ped=0.15' (every training collection named); empty = equal",
    "hard_negatives": "> 1: every tumor-free training image that --hard-negatives-from flags (its score at or above "
                      "that artifact's threshold) is drawn this many times as often (trainer.hard_negatives)",
    "hard_negatives_from": "an artifact folder (e.g. models/brain-tumor-cnn/21) whose model and threshold pick "
                           "the hard negatives; needed with --hard-negatives > 1",
    "hard_negatives_in": "comma-separated training collections whose tumor-free images are mined (e.g. 'brain-mri'); "
                         "empty = every collection",
    "skip_tumor_slices": "comma-separated 'collection/sequence' folders whose tumor-labelled slices are left out of "
                         "training (their tumor-free slices stay), e.g. 'lgg/t1-pre,lgg/t1-post': labels drawn on "
                         "another sequence, where the tumor is often invisible",
    "init_from": "a model.keras (same architecture and input size) whose weights start the run",
    "model_dir": "where <name>/<version>/ is written; local or gs://",
    "name": "model name (first path level of the artifact)",
    "version": "artifact version; empty picks 1 + the highest existing integer version",
    "image_size": "square input size in pixels",
    "preprocessing": "prepare()'s version (screening_core/preprocessing.py); the current one unless a recipe "
                     "rebuilds a model made on an older one (the Makefile's train-vN targets name theirs)",
    "epochs": "maximum epochs (early stopping on validation AUC may stop sooner)",
    "batch_size": "batch size per replica; the global batch is this x the number of replicas",
    "learning_rate": "peak learning rate (AdamW)",
    "lr_schedule": "'cosine': one-epoch warm-up then cosine decay to 0 over --epochs; "
                   "'plateau': constant, cut 0.3x when validation AUC stalls",
    "weight_decay": "AdamW decoupled weight decay",
    "val_fraction": "fraction of images (whole near-duplicate groups) held out for validation",
    "seed": "seed for the split (unless --split-seed), initialisation, shuffling and augmentation",
    "split_seed": "seed of the validation split alone; -1: --seed's. Draws of one recipe with other --seed values "
                  "keep the ensemble's validation patients out of training only with one split seed (v24 and v26, "
                  "seeds 43 and 44, trained on most of v30's validation slices: docs/model_v4_notes.md row SPL)",
    "mixed_precision": "train with the mixed_float16 policy (GPUs); the output stays float32",
    "target_sensitivity": "sensitivity the operating threshold must reach on validation",
    "threshold_sources": "regex over validation sources ('collection' or 'collection/sequence') on which "
                         "the threshold is chosen; empty = all (leave out sources with noisy labels)",
    "class_map": "class-name overrides, e.g. 'yes=1,no=0' (1 = tumor)",
    "resume": "resume from the backup of an interrupted run with the same model-dir/name",
    "early_stopping_patience": "epochs without validation-AUC improvement before stopping",
    "dedup_threshold": "thumbnail correlation at which two images count as near-duplicates",
    "base_filters": "width of the first conv block (the CNN doubles it per block)",
    "cpu_replicas": "on a machine without GPUs, split the CPU into this many logical devices "
                    "and train under MirroredStrategy (testing the distributed path)",
    "bootstrap": "bootstrap resamples for the 95%% confidence intervals (0 = none)",
    "max_images": "use at most this many images (0 = all); for smoke tests",
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Train the brain-MRI tumor screening CNN and export a versioned artifact.",
        formatter_class=HelpFormatter)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in (list, "list"):
            parser.add_argument(flag, action="append", default=[], help=_HELP[field.name],
                                required=field.name == "data_dir")
        elif field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction,
                                default=field.default, help=_HELP[field.name])
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(field.type), field.type)
            choices = {"augment": list(AUGMENT_MODES), "preprocessing": list(PREPROCESSING_IDS),
                       "lr_schedule": ["cosine", "plateau"]}.get(field.name)
            parser.add_argument(flag, type=kind, default=field.default, help=_HELP[field.name],
                                choices=choices)
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    try:
        cfg.shares()
        parse_masks_dirs(cfg.masks_dir, os.path.isdir)
        cfg.check_hard_negatives(os.path.isfile)
    except ValueError as e:
        parser.error(str(e))
    return cfg


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = parse_args(argv)
    from trainer import train
    try:
        train.train(cfg)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
