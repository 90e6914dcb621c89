"""A tumor-free training collection cut from real MRI volumes of people without a tumor.

Why: every collection we had paired its tumor slices with tumor-free slices from other levels or another
source, and the synthetic template (trainer.template_slices) is one averaged brain; a model trained on them
flags about a third of the slices of a real healthy head (docs/tumor_free_probe.md). Real heads without a
tumor, at every level, in the sequences a site scores, with the normal findings of their age (white-matter
hyperintensities, atrophy, bright scalp fat), are the negatives that teach the lesion map what is not a tumor.

Input: one folder per look, each holding NIfTI volumes named by subject (`<input>/flair/subj07.nii.gz`,
`<input>/t1/subj07.nii.gz`). Output: a collection the trainers read like `lgg/`: `<out>/<look>/notumor/
vol_<subject>_z<k>.png`, an empty `masks/` (every slice is an all-negative lesion map) and SOURCE.txt. The
slices are cut as brain-score cuts a NIfTI volume (screening_core.volumes); slices with no head in them (noise
above the vertex, empty field below the neck) are left out. `--exclude` keeps subjects out, to hold them
back as a test the model never saw; the `vol_` prefix lets the trainers' group pattern keep a subject's slices
on one side of the validation split.

  python -m trainer.volume_slices --input ../data/healthy-heads-volumes --out ../data/healthy-heads \\
      --exclude '^subj(1[7-9]|2[0-3])$' --source docs/healthy_heads.md   (make data-healthy-heads)
"""
import argparse
import os
import re
import sys

import numpy as np

from trainer import HelpFormatter

SUFFIXES = (".nii.gz", ".nii")
_SUBJECT_RX = re.compile(r"^[A-Za-z0-9-]+$")


def volume_files(input_dir):
    """{look: [(subject, path)]} for every NIfTI file in `input_dir/<look>/`, in subject order."""
    out = {}
    for look in sorted(os.listdir(input_dir)):
        folder = os.path.join(input_dir, look)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
            if suffix is None:
                continue
            subject = name[:-len(suffix)]
            if not _SUBJECT_RX.match(subject):
                raise SystemExit(f"{os.path.join(folder, name)}: a subject name is letters, digits and '-' only "
                                 "(it becomes part of every slice's file name and its patient key)")
            out.setdefault(look, []).append((subject, os.path.join(folder, name)))
    if not out:
        raise SystemExit(f"{input_dir} holds no <look>/<subject>.nii.gz volumes")
    return out


def robust_max(frames):
    """The volume's 99.5th percentile: its scale, unmoved by a few hot voxels."""
    return max(float(np.percentile(np.stack(frames), 99.5)), 1e-6)


def head_slices(frames, top, min_level=0.25, min_area=0.03):
    """Indices of the frames with a head in them: a 99th percentile at least `min_level` of the volume's robust
    maximum `top`, and at least `min_area` of the frame above a fifth of it. Noise above the vertex and the
    empty field below the neck fail the first test, a sliver of scalp the second."""
    return [k for k, f in enumerate(frames)
            if np.percentile(f, 99) >= min_level * top and np.mean(f > 0.2 * top) >= min_area]


def to_uint8(frame, top):
    """The frame on the volume's own scale (0 .. robust maximum), as 8-bit grey."""
    return (np.clip(frame / top, 0, 1) * 255).round().astype(np.uint8)


def write_collection(input_dir, out_dir, exclude="", source_text="", max_frame_pixels=4096 * 4096, only=""):
    """Writes the collection of the subjects `only` matches (all when empty) that `exclude` does not; returns
    {look: {subject: slices written}}."""
    import nibabel as nib
    from PIL import Image

    from screening_core import volumes
    skip = re.compile(exclude) if exclude else None
    keep_only = re.compile(only) if only else None
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    if source_text:
        with open(os.path.join(out_dir, "SOURCE.txt"), "w") as f:
            f.write(source_text)
    written = {}
    for look, items in volume_files(input_dir).items():
        folder = os.path.join(out_dir, look, "notumor")
        for subject, path in items:
            if (skip and skip.search(subject)) or (keep_only and not keep_only.search(subject)):
                continue
            os.makedirs(folder, exist_ok=True)
            frames, dx, dy = volumes.axial_frames(nib.load(path))
            frames, _, _ = volumes.square_pixels(frames, dx, dy, max_frame_pixels)
            top = robust_max(frames)
            keep = head_slices(frames, top)
            for k in keep:
                Image.fromarray(to_uint8(frames[k], top)).save(os.path.join(folder, f"vol_{subject}_z{k:03d}.png"))
            written.setdefault(look, {})[subject] = len(keep)
    return written


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.volume_slices", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--input", required=True, help="folder of <look>/<subject>.nii.gz tumor-free volumes")
    p.add_argument("--out", required=True, help="collection folder to write (<look>/notumor/, masks/)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--exclude", default="", help="regex on the subject name: matching subjects are not written "
                     "(held back as a test)")
    who.add_argument("--only", default="", help="regex on the subject name: only matching subjects are written "
                     "(the held-back test)")
    p.add_argument("--source", default="", help="a text file with the volumes' source, licence and citation, "
                   "copied to SOURCE.txt")
    args = p.parse_args(argv)
    if not os.path.isdir(args.input):
        p.error(f"--input {args.input} is not a folder")
    for flag in ("exclude", "only"):
        try:
            re.compile(getattr(args, flag))
        except re.error as e:
            p.error(f"--{flag} is not a regular expression: {e}")
    if os.path.exists(args.out) and os.listdir(args.out):
        p.error(f"--out {args.out} exists and is not empty: remove it or choose another folder")
    text = ""
    if args.source:
        if not os.path.isfile(args.source):
            p.error(f"--source {args.source} is not a file")
        text = open(args.source).read()
    written = write_collection(args.input, args.out, args.exclude, text, only=args.only)
    if not written:  # a look gets an entry only when one of its subjects is written
        print(f"no subject of {args.input} was selected: nothing written", file=sys.stderr)
        return 1
    for look, subjects in written.items():
        print(f"{look}: {sum(subjects.values())} slices of {len(subjects)} subjects -> {os.path.join(args.out, look, 'notumor')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
