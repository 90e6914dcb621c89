"""One typed training configuration with working defaults.

`task.py` builds it from flags; tests build it directly. It is serialised into
the artifact's metadata, so every model records how it was made.
"""
import dataclasses
import posixpath

from screening_core.preprocessing import PREPROCESSING_ID

# trainer.augment's modes, named here so that task.py's --augment choices need no TensorFlow
AUGMENT_MODES = ("v2", "contrast", "contrast-strip", "contrast-strip-prepared")


def parse_masks_dirs(items, isdir=None):
    """{collection: folder} of --masks-dir COLLECTION=DIR items (both trainers take the flag); with `isdir`,
    each folder must also exist. ValueError with the flag's sentence otherwise."""
    out, bad = {}, []
    for item in items:
        name, sep, folder = (part.strip() for part in item.partition("="))
        if not (sep and name and folder) or (isdir is not None and not isdir(folder)):
            bad.append(item)
        else:
            out[name] = folder
    if bad:
        raise ValueError(f"--masks-dir wants COLLECTION=DIR with an existing folder: {bad}")
    return out


@dataclasses.dataclass
class TrainConfig:
    data_dir: list = dataclasses.field(default_factory=list)  # one or more collections
    eval_data_dir: list = dataclasses.field(default_factory=list)  # scored only, never trained on
    group_pattern: str = ""  # regex; its first group is a patient key (split unit)
    holdout_pattern: str = ""  # regex; matching images form a held-out site
    model_dir: str = "models"
    name: str = "brain-tumor-cnn"
    version: str = ""  # empty: next integer version under model_dir/name
    image_size: int = 128
    preprocessing: str = PREPROCESSING_ID  # prepare()'s id; an older one rebuilds a model made on it
    epochs: int = 30
    batch_size: int = 32  # per replica
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"  # cosine (warm-up + cosine decay over all epochs) or plateau
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 42
    split_seed: int = -1  # the validation split's seed; -1: seed's (draws of one recipe keep one split with it)
    mixed_precision: bool = False
    target_sensitivity: float = 0.95
    threshold_sources: str = ""  # regex over validation sources that choose the threshold ("" = all)
    class_map: str = ""  # overrides, e.g. "yes=1,no=0"
    resume: bool = True
    early_stopping_patience: int = 8
    dedup_threshold: float = 0.95
    base_filters: int = 32
    cpu_replicas: int = 0  # >1 splits the CPU into logical devices for MirroredStrategy
    bootstrap: int = 1000
    max_images: int = 0  # 0 = all; a smoke-test cap
    augment: str = "contrast"  # "v2" (geometry + photometrics) or "contrast" (+ tissue-contrast changes)
    balance_sources: bool = True  # equal share of each training collection in every batch
    lesion_weight: float = 0.0  # > 0: also learn tumor masks (collections with masks/), loss weight
    mask_sequence: str = "flair"  # the sequence folder the masks/ were drawn on
    synth_tumors: float = 0.0  # lesion head only: P(a tumor-free training slice gets a painted tumor)
    mirror_tumors: float = 0.0  # lesion head only: P(a one-sided tumor slice is mirrored, augment.mirror_pair)
    transplant_tumors: float = 0.0  # lesion head only: P(a tumor-free slice gets a real FLAIR/T2 tumor set in)
    transplant_axial_only: bool = False  # transplant only into slices of axial folders (not the healthy planes)
    fluid_bright: float = 0.0  # lesion head only: P(a FLAIR training slice is made T2-like, augment.bright_fluid)
    masks_dir: list = dataclasses.field(default_factory=list)  # "collection=folder": masks kept outside a collection
    init_from: str = ""  # a model.keras whose weights start the run (fine-tuning)
    source_shares: str = ""  # "collection=share,...": each collection's share of a batch (default: equal)
    hard_negatives: int = 1  # > 1: tumor-free training images --hard-negatives-from flags are drawn this often
    hard_negatives_from: str = ""  # an artifact folder whose model and threshold pick the hard negatives
    hard_negatives_in: str = ""  # "collection,...": mine only these collections' tumor-free images ("" = all)
    skip_tumor_slices: str = ""  # "collection/sequence,...": tumor-labelled slices left out of training

    def __post_init__(self):
        for name in ("data_dir", "eval_data_dir", "masks_dir"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) and value else list(value or []))

    def split_seed_used(self):
        """The seed of the validation split: `split_seed`, or `seed` where it is -1 (before session 29 every run)."""
        return self.seed if self.split_seed < 0 else self.split_seed

    def shares(self):
        """{collection: share} of --source-shares, or None (equal shares)."""
        if not self.source_shares:
            return None
        out = {}
        for item in self.source_shares.split(","):
            name, _, value = item.partition("=")
            try:
                share = float(value)
            except ValueError:
                share = -1.0
            if not name.strip() or not share > 0:
                raise ValueError(f"--source-shares wants COLLECTION=SHARE,... with shares > 0; got {item!r}")
            out[name.strip()] = share
        return out

    def check_hard_negatives(self, is_file):
        """Raise ValueError unless --hard-negatives is a whole number >= 1 with an artifact to mine with."""
        if self.hard_negatives < 1:
            raise ValueError(f"--hard-negatives is a number of draws >= 1, got {self.hard_negatives}")
        if self.hard_negatives > 1 and not is_file(posixpath.join(self.hard_negatives_from or ".", "metadata.json")):
            raise ValueError("--hard-negatives > 1 needs --hard-negatives-from pointing at an artifact folder "
                             f"(with metadata.json); got {self.hard_negatives_from!r}")
        if (self.hard_negatives_from or self.hard_negatives_in) and self.hard_negatives == 1:
            raise ValueError("--hard-negatives-from or --hard-negatives-in without --hard-negatives > 1 changes nothing")

    def masks_dirs(self):
        """{collection: folder} of --masks-dir."""
        return parse_masks_dirs(self.masks_dir)

    def to_dict(self):
        return dataclasses.asdict(self)
