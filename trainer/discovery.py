"""Find labelled images in the public brain-MRI layouts, unchanged.

Accepted layouts under `--data-dir` (local or gs://):
  (a) class folders: `yes/ no/` or `glioma/ meningioma/ pituitary/ notumor/`;
  (b) `Training/` and `Testing/` parents, each holding class folders (both are
      pooled: the trainer makes its own leakage-safe split);
  (c) a CSV index with an image column and a 0/1 class column, such as the
      Kaggle "Brain Tumor.csv";
  (d) MRI-sequence folders (`flair/ t1-pre/ t1-post/`), each holding class
      folders, as in the LGG collection; folders without class folders (such
      as `masks/`) are ignored and listed in the notes.
Every example records its collection (the data directory's name) and its MRI
sequence (layout d; "" where unknown), so metrics can be reported per source:
a pooled number hides a model that learned the sequence instead of the tumor.
The class-name -> label mapping is explicit and can be overridden.
"""
import csv
import dataclasses
import io
import os

import tensorflow as tf

from trainer.paths import join

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# 1 = tumor (positive), 0 = no tumor. Matching is case-insensitive.
DEFAULT_CLASS_MAP = {
    "glioma": 1, "glioma_tumor": 1, "meningioma": 1, "meningioma_tumor": 1,
    "pituitary": 1, "pituitary_tumor": 1, "yes": 1, "tumor": 1, "tumour": 1, "1": 1,
    "notumor": 0, "no_tumor": 0, "no": 0, "normal": 0, "healthy": 0, "0": 0,
}
_SPLIT_PARENTS = ("training", "testing", "train", "test", "val", "validation")
_CSV_IMAGE_COLUMNS = ("image", "filename", "file", "path", "image_path")
_CSV_CLASS_COLUMNS = ("class", "label", "target", "tumor")


class DiscoveryError(ValueError):
    """The data directory does not match a known layout."""


@dataclasses.dataclass(frozen=True)
class Example:
    path: str
    label: int
    class_name: str
    source: str  # the split parent or CSV name it came from ("" for layout a)
    collection: str = ""  # name of the data directory it was found in
    sequence: str = ""  # MRI-sequence folder (layout d), "" where unknown


def parse_class_map(text):
    """'yes=1,no=0' -> {'yes': 1, 'no': 0} (the flag's format)."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        if value.strip() not in ("0", "1"):
            raise ValueError(f"class map entry {item!r}: expected name=0 or name=1")
        out[name.strip().lower()] = int(value)
    return out



def _subdirs(path):
    return sorted(e.rstrip("/") for e in tf.io.gfile.listdir(path)
                  if tf.io.gfile.isdir(join(path, e.rstrip("/"))))


def _images_under(path):
    found = []
    for root, _, files in tf.io.gfile.walk(path):
        found += [join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _from_class_folders(root, class_map, source, sequence=""):
    dirs = [d for d in _subdirs(root) if not d.startswith((".", "_"))]
    unknown = [d for d in dirs if d.lower() not in class_map]
    if unknown:
        raise DiscoveryError(
            f"{root}: folders {unknown} are not in the class map; found folders {dirs}. "
            f"Known names: {sorted(class_map)}. Pass --class-map name=0|1,... to map them.")
    examples = []
    for d in dirs:
        label = class_map[d.lower()]
        examples += [Example(p, label, d, source, sequence=sequence) for p in _images_under(join(root, d))]
    return examples


def _sequence_folders(root, dirs, class_map):
    """Layout (d): {sequence: class folders} for dirs whose subfolders are all classes."""
    found, ignored = {}, []
    for d in dirs:
        subs = [s for s in _subdirs(join(root, d)) if not s.startswith((".", "_"))]
        if subs and all(s.lower() in class_map for s in subs):
            found[d] = subs
        else:
            ignored.append(d)
    return found, ignored


def _find_csv(root):
    return sorted(join(root, f) for f in tf.io.gfile.listdir(root) if f.lower().endswith(".csv"))


def _from_csv(csv_path, root):
    with tf.io.gfile.GFile(csv_path, "r") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    if not rows:
        raise DiscoveryError(f"{csv_path} has no rows")
    cols = {c.strip().lower(): c for c in rows[0]}
    img_col = next((cols[c] for c in _CSV_IMAGE_COLUMNS if c in cols), None)
    cls_col = next((cols[c] for c in _CSV_CLASS_COLUMNS if c in cols), None)
    if img_col is None or cls_col is None:
        raise DiscoveryError(
            f"{csv_path}: need an image column {_CSV_IMAGE_COLUMNS} and a 0/1 class "
            f"column {_CSV_CLASS_COLUMNS}; found columns {list(rows[0])}")
    by_stem = {}
    for p in _images_under(root):
        by_stem.setdefault(os.path.splitext(os.path.basename(p))[0], p)
        by_stem.setdefault(os.path.basename(p), p)
    examples, missing = [], []
    for row in rows:
        name = row[img_col].strip()
        value = row[cls_col].strip()
        if value not in ("0", "1"):
            raise DiscoveryError(f"{csv_path}: class value {value!r} for {name!r} is not 0 or 1")
        path = by_stem.get(name) or by_stem.get(os.path.splitext(os.path.basename(name))[0])
        if path is None:
            missing.append(name)
            continue
        examples.append(Example(path, int(value), value, os.path.basename(csv_path)))
    return examples, missing


def discover_all(roots, class_map=None):
    """`discover` over several data directories; collections must have distinct names."""
    examples, notes = [], {"layout": [], "missing": []}
    names = [collection_name(r) for r in roots]
    if len(set(names)) != len(names):
        raise DiscoveryError(f"data directories {list(roots)} share a folder name; "
                             "per-source metrics need distinct names")
    for root in roots:
        ex, n = discover(root, class_map)
        examples += ex
        notes["layout"].append(f"{collection_name(root)}: {n['layout']}")
        notes["missing"] += n["missing"]
    notes["layout"] = "; ".join(notes["layout"])
    return examples, notes


def collection_name(root):
    return root.rstrip("/").rsplit("/", 1)[-1]


def discover(root, class_map=None):
    """(examples, notes): every labelled image under `root` and what was found.

    `notes` holds the layout name and any CSV rows whose image is missing.
    """
    examples, notes = _discover(root, class_map)
    name = collection_name(root)
    return [dataclasses.replace(e, collection=name) for e in examples], notes


def _discover(root, class_map=None):
    class_map = {**DEFAULT_CLASS_MAP, **(class_map or {})}
    if not tf.io.gfile.isdir(root):
        raise DiscoveryError(f"data directory {root} does not exist")
    dirs = _subdirs(root)
    lower = {d.lower(): d for d in dirs}
    split_parents = [lower[p] for p in _SPLIT_PARENTS if p in lower]
    if split_parents:
        examples = []
        for parent in split_parents:
            examples += _from_class_folders(join(root, parent), class_map, parent)
        return examples, {"layout": "split_parents", "parents": split_parents, "missing": []}
    usable = [d for d in dirs if d.lower() in class_map]
    # Sequence folders win over a CSV beside them: BraTS-PEDs ships a manifest.csv
    # (text labels, one row per sequence) next to its flair/ t2/ ... folders.
    sequences, ignored = _sequence_folders(root, dirs, class_map) if dirs and not usable else ([], [])
    csvs = _find_csv(root)
    if csvs and not usable and not sequences:
        if len(csvs) > 1:
            raise DiscoveryError(f"{root}: several CSV files {csvs}; keep one index")
        examples, missing = _from_csv(csvs[0], root)
        return examples, {"layout": "csv", "csv": csvs[0], "missing": missing}
    if dirs and not usable:
        if sequences:
            examples = []
            for seq in sequences:
                examples += _from_class_folders(join(root, seq), class_map, "", sequence=seq)
            return examples, {"layout": "sequence_folders", "sequences": sorted(sequences),
                              "ignored": ignored, "missing": []}
    if dirs:
        return _from_class_folders(root, class_map, ""), {"layout": "class_folders", "missing": []}
    raise DiscoveryError(
        f"{root}: no class folders, Training/Testing parents or CSV index found "
        f"(entries: {sorted(tf.io.gfile.listdir(root))[:20]})")
