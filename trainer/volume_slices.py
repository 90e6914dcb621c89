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

`--non-tumor-lesions LOOK=DIR` adds masks of bright lesions that are not a tumor (white-matter
hyperintensities segmented in the look's own voxel grid, `DIR/<subject>.nii.gz`): they are written as
`<out>/non-tumor-lesions/<look>/vol_<subject>_z<k>.png` (255 = lesion) for the slices that hold one, and the
lesion trainer can weigh those pixels up as negatives (`--mimic-weight`). Why: on the older adults' FLAIR the
lesion map's false alarms sit on such hyperintensities (docs/model_v4_notes.md), which are a few hundred of a
slice's sixteen thousand pixels and so barely move a per-pixel loss.

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
LESIONS_DIR = "non-tumor-lesions"
NAME_RX = re.compile(r"^[A-Za-z0-9-]+$")  # subject, case and look names: they become part of slice file names


def nifti_stem(name):
    """The file name without its NIfTI suffix, or None for a file that is no NIfTI volume."""
    suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
    return name[:-len(suffix)] if suffix else None


def write_whole(out_dir, write):
    """`write(folder)` into `<out_dir>.part`, then moved into place whole: no half-written collection is ever read,
    and a failed write leaves nothing behind. Returns what `write` returns."""
    import shutil
    tmp = out_dir.rstrip("/") + ".part"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        result = write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, out_dir)
    return result


def volume_files(input_dir, skip=()):
    """{look: [(subject, path)]} for every NIfTI file in `input_dir/<look>/`, in subject order; folders in `skip`
    (lesion masks kept beside the volumes) are not looks."""
    out = {}
    skip = {os.path.realpath(d) for d in skip}
    for look in sorted(os.listdir(input_dir)):
        folder = os.path.join(input_dir, look)
        if not os.path.isdir(folder) or os.path.realpath(folder) in skip:
            continue
        for name in sorted(os.listdir(folder)):
            subject = nifti_stem(name)
            if subject is None:
                continue
            if not NAME_RX.match(subject):
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


def volume_frames(path, max_frame_pixels, plane="axial"):
    """The frames of the NIfTI volume at `path` in `plane` with square pixels, as brain-score cuts it (axial)
    and as a viewer shows the other planes."""
    import nibabel as nib

    from screening_core import volumes
    frames, dx, dy = volumes.plane_frames(nib.load(path), plane)
    return volumes.square_pixels(frames, dx, dy, max_frame_pixels)[0]


MAX_RESLICE_MM = 2.5  # a sagittal cut of 5 mm axial slices is a staircase no scanner shows


def can_cut(path, plane):
    """Whether the NIfTI volume at `path` may be cut in `plane`: axial always (brain-score cuts every volume so),
    another plane only when no voxel side exceeds MAX_RESLICE_MM."""
    import nibabel as nib
    return plane == "axial" or max(float(z) for z in nib.load(path).header.get_zooms()[:3]) <= MAX_RESLICE_MM


def head_frames(path, plane="axial", max_frame_pixels=4096 * 4096):
    """(frames, indices of the frames with a head in them, the volume's scale for `to_uint8`) of the NIfTI volume
    at `path` cut in `plane`."""
    frames = volume_frames(path, max_frame_pixels, plane)
    top = robust_max(frames)
    return frames, head_slices(frames, top), top


def look_folder(look, plane):
    """Axial slices keep the look's folder name; another plane's go beside them (`t1-sagittal`), so a subject's
    planes share its patient key and stay on one side of the validation split."""
    return look if plane == "axial" else f"{look}-{plane}"


def lesion_frames(path, shape, max_frame_pixels, plane="axial"):
    """The lesion mask volume at `path` as boolean frames cut like its look's volume (`shape`: that volume's
    frame shape and count); a mask in another voxel grid is refused."""
    frames = volume_frames(path, max_frame_pixels, plane)
    if (len(frames), *frames[0].shape) != shape:
        raise SystemExit(f"{path}: lesion mask of {len(frames)} slices of {frames[0].shape}, but its volume has "
                         f"{shape[0]} of {shape[1:]}: a mask must be in the volume's own voxel grid")
    return [f > 0.5 for f in frames]


def write_collection(input_dir, out_dir, exclude="", source_text="", max_frame_pixels=4096 * 4096, only="",
                     lesions=None, planes=("axial",)):
    """Writes the collection of the subjects `only` matches (all when empty) that `exclude` does not; returns
    {look folder: {subject: slices written}}. `lesions` ({look: folder of <subject>.nii.gz masks}) adds the
    slices' non-tumor lesion masks. A volume is cut in a plane other than axial only where `can_cut`."""
    from PIL import Image

    skip = re.compile(exclude) if exclude else None
    keep_only = re.compile(only) if only else None
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    if source_text:
        with open(os.path.join(out_dir, "SOURCE.txt"), "w") as f:
            f.write(source_text)
    written = {}
    lesions = lesions or {}
    for (look, items), plane in ((li, plane) for li in volume_files(input_dir, skip=lesions.values()).items()
                                 for plane in planes):
        name = look_folder(look, plane)
        folder = os.path.join(out_dir, name, "notumor")
        for subject, path in items:
            if (skip and skip.search(subject)) or (keep_only and not keep_only.search(subject)):
                continue
            if not can_cut(path, plane):
                print(f"{look}/{subject}: voxels coarser than {MAX_RESLICE_MM} mm, not cut {plane}")
                continue
            os.makedirs(folder, exist_ok=True)
            frames, keep, top = head_frames(path, plane, max_frame_pixels)
            for k in keep:
                Image.fromarray(to_uint8(frames[k], top)).save(os.path.join(folder, f"vol_{subject}_z{k:03d}.png"))
            mask_path = next((os.path.join(lesions[look], subject + s) for s in SUFFIXES
                              if look in lesions and os.path.isfile(os.path.join(lesions[look], subject + s))), None)
            if mask_path:
                marked = lesion_frames(mask_path, (len(frames), *frames[0].shape), max_frame_pixels, plane)
                mdir = os.path.join(out_dir, LESIONS_DIR, name)
                os.makedirs(mdir, exist_ok=True)
                for k in keep:
                    if marked[k].any():
                        Image.fromarray(marked[k].astype(np.uint8) * 255).save(
                            os.path.join(mdir, f"vol_{subject}_z{k:03d}.png"))
            written.setdefault(name, {})[subject] = len(keep)
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
    p.add_argument("--non-tumor-lesions", action="append", default=[], metavar="LOOK=DIR",
                   help="masks of non-tumor lesions (white-matter hyperintensities) of LOOK's volumes, "
                        "DIR/<subject>.nii.gz in the same voxel grid; written to non-tumor-lesions/LOOK/")
    p.add_argument("--planes", default="axial", metavar="PLANE[,PLANE]",
                   help="planes to cut, of axial, sagittal, coronal (comma-separated); a look's sagittal and "
                        "coronal slices go to <look>-sagittal/ and <look>-coronal/")
    args = p.parse_args(argv)
    planes = tuple(x.strip() for x in args.planes.split(",") if x.strip())
    from screening_core.volumes import PLANES
    bad = [x for x in planes if x not in PLANES]
    if bad or not planes or len(set(planes)) != len(planes):
        p.error(f"--planes takes distinct planes of {', '.join(PLANES)}, got {args.planes!r}")
    if not os.path.isdir(args.input):
        p.error(f"--input {args.input} is not a folder")
    lesions = {}
    for item in args.non_tumor_lesions:
        look, sep, folder = item.partition("=")
        if not sep or not look or not folder:
            p.error(f"--non-tumor-lesions takes LOOK=DIR, got {item!r}")
        if not os.path.isdir(folder):
            p.error(f"--non-tumor-lesions {look}={folder}: not a folder")
        if look in lesions:
            p.error(f"--non-tumor-lesions: {look} given twice")
        lesions[look] = folder
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
    written = write_collection(args.input, args.out, args.exclude, text, only=args.only, lesions=lesions,
                               planes=planes)
    if not written:  # a look gets an entry only when one of its subjects is written
        print(f"no subject of {args.input} was selected: nothing written", file=sys.stderr)
        return 1
    for look, subjects in written.items():
        print(f"{look}: {sum(subjects.values())} slices of {len(subjects)} subjects -> {os.path.join(args.out, look, 'notumor')}")
    for look in (look_folder(look, plane) for look in lesions for plane in planes):
        mdir = os.path.join(args.out, LESIONS_DIR, look)
        n = len(os.listdir(mdir)) if os.path.isdir(mdir) else 0
        print(f"{look}: {n} slices with a non-tumor lesion mask -> {mdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
