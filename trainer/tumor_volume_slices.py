"""A labelled test collection cut from co-registered MRI volumes of tumor patients and their tumor masks.

Why: no T2 slice with a tumor of an adult is in any collection we train or test on (brats-sample's T2 is one
patient, brats-ped's are children), and the hidden tests hold axial T2 tumors. Volumes of one patient in
several looks that share one tumor mask test the looks against each other at the same levels: a model that
finds a tumor on FLAIR and misses it on T2 of the same slice reads the look, not the lesion.

Input: one folder per case, `<input>/<case>/<look>.nii.gz` (flair, t2, t1ce, t1, ...) and
`<input>/<case>/tumor.nii.gz`, the tumor label volume in the same voxel grid (any value > 0 is tumor). Output: a
collection laid out like brats-sample, which `--eval-data-dir` and brain-validate read: `<out>/<look>/{tumor,
notumor}/vol_<case>_z<k>.png` and `<out>/masks/vol_<case>_z<k>.png` (255 = tumor, one mask for every look of
the slice). The labelling rule is brats-sample's: `tumor` = at least 50 labelled voxels in the slice;
`notumor` = none, at least 3 slices from any labelled slice, and a head in the slice. Slices are cut as
brain-score cuts a NIfTI volume (screening_core.volumes), on each volume's own scale.

  python -m trainer.tumor_volume_slices --input ../data/brats-toolkit-volumes --out ../data/brats-toolkit \\
      --source docs/brats_toolkit_check.md   (make data-brats-toolkit)
"""
import argparse
import os
import sys

import numpy as np

from trainer import HelpFormatter, volume_slices

TUMOR_FILE = "tumor"
MIN_TUMOR_VOXELS = 50
MIN_GAP = 3  # slices between a tumor-free slice and any labelled one


def cases(input_dir):
    """{case: (tumor label path, {look: volume path})} for every `<case>/` holding a tumor file and a look."""
    out = {}
    for case in sorted(os.listdir(input_dir)):
        folder = os.path.join(input_dir, case)
        if not os.path.isdir(folder):
            continue
        files = {}
        for name in sorted(os.listdir(folder)):
            stem = volume_slices.nifti_stem(name)
            if stem:
                files[stem] = os.path.join(folder, name)
        for key in [case, *files]:
            if not volume_slices.NAME_RX.match(key):
                raise SystemExit(f"{folder}: case and look names are letters, digits and '-' only, got {key!r} "
                                 "(they become part of every slice's file name)")
        tumor = files.pop(TUMOR_FILE, None)
        if tumor is None or not files:
            raise SystemExit(f"{folder}: a case needs {TUMOR_FILE}.nii.gz and at least one <look>.nii.gz")
        out[case] = (tumor, files)
    if not out:
        raise SystemExit(f"{input_dir} holds no <case>/{TUMOR_FILE}.nii.gz + <look>.nii.gz folders")
    return out


def slice_labels(tumor_frames, has_head):
    """{slice index: 'tumor' | 'notumor'} by brats-sample's rule; slices near a tumor or without a head get none."""
    voxels = np.array([int(np.count_nonzero(f > 0)) for f in tumor_frames])
    labelled = np.flatnonzero(voxels)
    out = {}
    for k, n in enumerate(voxels):
        if n >= MIN_TUMOR_VOXELS:
            out[k] = "tumor"
        elif n == 0 and k in has_head and (not len(labelled) or np.abs(labelled - k).min() >= MIN_GAP):
            out[k] = "notumor"
    return out


def write_collection(input_dir, out_dir, source_text="", max_frame_pixels=4096 * 4096):
    """Writes the collection; returns {look: {case: {'tumor': n, 'notumor': n}}}. Every look of a case must share
    the tumor volume's voxel grid, or its slices would be labelled by another level's mask."""
    from PIL import Image

    written = {}
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    if source_text:
        with open(os.path.join(out_dir, "SOURCE.txt"), "w") as f:
            f.write(source_text)
    for case, (tumor_path, looks) in cases(input_dir).items():
        tumor = volume_slices.volume_frames(tumor_path, max_frame_pixels)
        shape = (len(tumor), *tumor[0].shape)
        for look, path in looks.items():
            frames, has_head, top = volume_slices.head_frames(path, max_frame_pixels=max_frame_pixels)
            if (len(frames), *frames[0].shape) != shape:
                raise SystemExit(f"{path}: {len(frames)} slices of {frames[0].shape}, but {tumor_path} has "
                                 f"{shape[0]} of {shape[1:]}: every look must be in the tumor mask's voxel grid")
            counts = {"tumor": 0, "notumor": 0}
            for k, label in slice_labels(tumor, set(has_head)).items():
                name = f"vol_{case}_z{k:03d}.png"
                folder = os.path.join(out_dir, look, label)
                os.makedirs(folder, exist_ok=True)
                Image.fromarray(volume_slices.to_uint8(frames[k], top)).save(os.path.join(folder, name))
                if label == "tumor":
                    Image.fromarray((tumor[k] > 0).astype(np.uint8) * 255).save(os.path.join(out_dir, "masks", name))
                counts[label] += 1
            written.setdefault(look, {})[case] = counts
    return written


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.tumor_volume_slices", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--input", required=True, help="folder of <case>/<look>.nii.gz + <case>/tumor.nii.gz")
    p.add_argument("--out", required=True, help="collection folder to write (<look>/{tumor,notumor}/, masks/)")
    p.add_argument("--source", default="", help="a text file with the volumes' source, licence and citation, "
                   "copied to SOURCE.txt")
    args = p.parse_args(argv)
    if not os.path.isdir(args.input):
        p.error(f"--input {args.input} is not a folder")
    if os.path.exists(args.out):
        p.error(f"--out {args.out} exists: remove it to cut the collection again")
    source_text = ""
    if args.source:
        with open(args.source) as f:
            source_text = f.read()
    cases(args.input)  # refuses a malformed input before anything is written
    written = volume_slices.write_whole(args.out, lambda tmp: write_collection(args.input, tmp, source_text))
    for look, by_case in written.items():
        print(f"{look}: " + ", ".join(f"{c} {n['tumor']} tumor / {n['notumor']} tumor-free" for c, n in by_case.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
