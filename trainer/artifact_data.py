"""The images an artifact was scored on, read back as model inputs.

Both the OOD reference (`trainer.ood`, fitted on training and validation inputs) and the ONNX export
(`trainer.export`, parity on validation inputs) need them; here so that neither imports the other
(`ood build` re-exports a stale graph, so ood -> export is the one direction).
"""
import csv
import os

from screening_core import preprocessing


def read_inputs(paths, spec):
    """Model inputs of image files, through the one preprocessing."""
    out = []
    for p in paths:
        with open(p, "rb") as f:
            out.append(preprocessing.image_bytes_to_input(f.read(), spec))
    return out


def split_rows(version_dir):
    """Rows of validation_predictions.csv (artifacts before v3 have no split/source columns: all validation)."""
    with open(os.path.join(version_dir, "validation_predictions.csv")) as f:
        return [{"split": "validation", "source": "", **r} for r in csv.DictReader(f)]
