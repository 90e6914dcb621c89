"""Tumor-free training slices at every level, in T1, T2 and FLAIR, from the MNI152 brain template.

Why: in every collection we have, the tumor-free slices come from other levels or another source than the
tumor slices, so a model learns level and source (docs/model_v4_notes.md); the template is one healthy brain
from the skull base to the vertex. Its T1 is the template itself; T2 and FLAIR are drawn from its tissue
maps (CSF bright on T2 and dark on FLAIR, grey matter brighter than white on both), with a bias field,
noise, a small rotation and scale, and, on half of the slices, a scalp and skull around the brain (most
archives are not skull-stripped). Every slice is tumor-free and the collection has an empty `masks/`
folder, so the lesion trainer reads each as an all-negative map, and `--synth-tumors` and
`--transplant-tumors` can put tumors into them (a tumor at a level and in a look where no collection
shows one). It is one averaged anatomy: a validation split of it measures nothing held out.

The template is the ICBM 2009a nonlinear symmetric MNI152 (Fonov et al., NeuroImage 2011; Collins et
al.), as shipped in nilearn's wheel (`nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_
converted.nii.gz`; free to use, copy and modify with its copyright notice kept, which SOURCE.txt in the
written collection carries). `make data-mni152` fetches that wheel from PyPI, keeps the three files in
../data/mni152-template and writes the collection:

  python -m trainer.template_slices --template-dir ../data/mni152-template --out ../data/mni152
  python -m trainer.template_slices --template-dir ../data/mni152-template --step 3 --probe models/brain-tumor-cnn/15
"""
import argparse
import os
import shutil

import numpy as np

from trainer import HelpFormatter

FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
LOOKS = ("t1", "t2", "flair")
SOURCE = """MNI152 template slices written by trainer.template_slices (tumor-free; T2 and FLAIR drawn from tissue maps).
Source: ICBM 2009a Nonlinear Symmetric MNI152 template, as shipped in nilearn's wheel.
Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
McGill University. Use, copying and modification are permitted with this notice kept.
Cite: Fonov et al., NeuroImage 54(1), 2011; Fonov et al., NeuroImage 47(S1), 2009.
"""
# Tissue intensities (CSF, grey, white) of the drawn sequences, on a [0, 1] scale.
TISSUE = {"t2": (0.95, 0.50, 0.32), "flair": (0.12, 0.62, 0.45)}


def load_template(template_dir):
    """(t1, gm, wm) volumes in [0, 1], axial slices along the last axis."""
    import nibabel as nib
    vols = []
    for key in ("t1", "gm", "wm"):
        path = os.path.join(template_dir, FILES[key])
        if not os.path.exists(path):
            raise SystemExit(f"{path} not found: --template-dir must hold {', '.join(FILES.values())}")
        v = np.asarray(nib.load(path).get_fdata(), np.float32)
        vols.append(v / max(float(v.max()), 1e-6))
    return tuple(vols)


def looks_of(t1, gm, wm):
    """{look: volume in [0, 1]} with the brain's mask: T1 as is, T2 and FLAIR from the tissue maps."""
    brain = t1 > 0.02
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    out = {"t1": t1}
    for look, (c, g, w) in TISSUE.items():
        out[look] = np.clip(c * csf + g * gm + w * wm, 0.0, 1.0) * brain
    return out, brain


def _bias_field(shape, rng, strength):
    """A smooth multiplicative field (1 +- strength), as a receive coil leaves on an image."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a, b, c = rng.normal(0, 1, 3)
    f = a * (xx - 0.5) + b * (yy - 0.5) + c * (xx - 0.5) * (yy - 0.5) * 4
    return 1.0 + strength * f / max(np.abs(f).max(), 1e-6)


def _blur(img, sigma):
    """Separable Gaussian blur (numpy only)."""
    if sigma <= 0.05:
        return img
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 0, img)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), 1, out)


def _head_around(img, brain, rng, look):
    """A skull (dark) and scalp (bright, textured) ring around the brain mask."""
    gap, scalp = int(rng.integers(3, 7)), int(rng.integers(4, 9))
    from screening_core.gradcam import grow
    inner = grow(brain, gap)
    ring = grow(inner, scalp) & ~inner
    level = {"t1": 0.85, "t2": 0.7, "flair": 0.75}[look] * rng.uniform(0.8, 1.1)
    texture = _blur(rng.normal(0, 1, img.shape), 1.5)
    texture = texture / max(float(texture.std()), 1e-6)
    out = img.copy()
    out[ring] = np.clip(level + 0.08 * texture[ring], 0, 1)
    out[inner & ~brain] = rng.uniform(0.0, 0.08)
    return out


def variant(slice2d, brain2d, rng, look, skull_share=0.5):
    """One augmented copy of a template slice (2-D arrays, brain mask), as uint8; a scalp and skull are
    drawn around the brain with probability `skull_share`."""
    from PIL import Image
    img = slice2d * _bias_field(slice2d.shape, rng, rng.uniform(0.05, 0.25))
    if rng.random() < skull_share:
        img = _head_around(img, brain2d, rng, look)
    h, w = img.shape
    pic = Image.fromarray(img.astype(np.float32), "F").rotate(rng.uniform(-12, 12), Image.BILINEAR)
    scale = rng.uniform(0.9, 1.1)
    zh, zw = int(round(h * scale)), int(round(w * scale))
    pic = pic.resize((zw, zh), Image.BILINEAR)
    canvas = Image.new("F", (w, h), 0.0)
    canvas.paste(pic, ((w - zw) // 2, (h - zh) // 2))
    img = _blur(np.asarray(canvas), rng.uniform(0.0, 0.8))
    img = img + rng.normal(0, rng.uniform(0.005, 0.03), img.shape) * (img > 0.01)
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def axial_levels(brain, step, min_brain_px):
    """Indices of the axial slices, every `step`, whose brain covers at least `min_brain_px` pixels."""
    zs = [z for z in range(0, brain.shape[2], step) if brain[:, :, z].sum() >= min_brain_px]
    if not zs:
        raise SystemExit("no axial slice of the template holds enough brain")
    return zs


def write_collection(t1, gm, wm, out_dir, step=2, variants=3, seed=0, min_brain_px=800, looks=LOOKS,
                     skull_share=0.5):
    """Writes out_dir/<look>/notumor/mni152_v<k>_<z>.png for each of `looks` and an empty out_dir/masks/;
    returns the count.

    Axial slices every `step` voxels whose brain covers at least `min_brain_px` pixels, `variants`
    augmented copies of each per look; rows flipped so anterior is up, as radiology displays them."""
    from PIL import Image
    drawn, brain = looks_of(t1, gm, wm)
    zs = axial_levels(brain, step, min_brain_px)
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "masks"), exist_ok=True)
    with open(os.path.join(out_dir, "SOURCE.txt"), "w") as f:
        f.write(SOURCE)
    n = 0
    for look in LOOKS:  # every look draws its variants, so a subset writes the same slices as the full set
        folder = os.path.join(out_dir, look, "notumor")
        if look in looks:
            os.makedirs(folder, exist_ok=True)
        for z in zs:
            sl, br = np.rot90(drawn[look][:, :, z]), np.rot90(brain[:, :, z])
            for k in range(variants):
                img = variant(sl, br, rng, look, skull_share)
                if look in looks:
                    Image.fromarray(img).save(os.path.join(folder, f"mni152_v{k}_{z:03d}.png"))
                    n += 1
    return n


def probe(artifacts, t1, gm, wm, step=3, seed=0, min_brain_px=800, n_bins=5):
    """{artifact: {look: {"flagged": share, "n": levels, "by_level": {bin: share}, "in_sample": bool}}}.

    The template's tumor-free levels (every `step` mm, light noise, no other augmentation) scored at each
    artifact's threshold: a healthy brain at every level in three looks. One averaged brain, so a probe and
    not a specificity; `in_sample` marks an artifact trained on a template collection (its figure is optimistic).
    """
    import io

    from PIL import Image

    from screening_core import artifact as artifact_io
    from screening_core import preprocessing
    drawn, brain = looks_of(t1, gm, wm)
    zs = axial_levels(brain, step, min_brain_px)
    levels = (np.array(zs, float) - zs[0]) / max(zs[-1] - zs[0], 1)
    bins = np.minimum((levels * n_bins).astype(int), n_bins - 1)
    rng = np.random.default_rng(seed)
    pngs = {}
    for look in LOOKS:
        pngs[look] = []
        for z in zs:
            sl = np.rot90(drawn[look][:, :, z])
            sl = np.clip(sl + rng.normal(0, 0.02, sl.shape) * (sl > 0), 0, 1)
            buf = io.BytesIO()
            Image.fromarray((sl * 255).round().astype(np.uint8)).save(buf, "PNG")
            pngs[look].append(buf.getvalue())
    out = {}
    for a in artifacts:
        model, md = artifact_io.load(a)
        spec = preprocessing.InputSpec.from_dict(md["input_spec"])
        trained = " ".join(str(d) for d in (md.get("training_config") or {}).get("data_dir") or [])
        out[a] = {}
        for look in LOOKS:
            x = np.stack([preprocessing.image_bytes_to_input(b, spec) for b in pngs[look]]).astype(np.float32)
            p = np.asarray(model.predict_on_batch(x)).reshape(len(x), -1)[:, 0]
            flagged = p >= md["threshold"]
            out[a][look] = {"flagged": round(float(flagged.mean()), 4), "n": len(zs),
                            "by_level": {f"{b / n_bins:.1f}-{(b + 1) / n_bins:.1f}": round(float(flagged[bins == b].mean()), 4)
                                         for b in range(n_bins) if (bins == b).any()},
                            "in_sample": "mni152" in trained}
    return out


def probe_table(result):
    """Markdown: one row per artifact and look, the share flagged overall and per fifth of the stack."""
    first = next(iter(result.values()))
    bins = list(next(iter(first.values()))["by_level"])
    lines = ["| artifact | look | levels | flagged | " + " | ".join(bins) + " |", "|---|---|---|---|" + "---|" * len(bins)]
    for a, looks in result.items():
        for look, r in looks.items():
            name = os.path.basename(a.rstrip("/")) + (" (trained on it)" if r["in_sample"] else "")
            lines.append(f"| {name} | {look} | {r['n']} | {100 * r['flagged']:.1f} % | "
                         + " | ".join(f"{100 * r['by_level'][b]:.0f} %" for b in bins) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.template_slices", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--template-dir", required=True, help="folder with the three MNI152 NIfTI files nilearn ships")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", help="collection folder to write (t1/, t2/, flair/, masks/)")
    what.add_argument("--probe", nargs="+", metavar="ARTIFACT", help="instead of writing: score the template's "
                      "levels (every --step mm) with these artifacts at their thresholds, by look and fifth of the stack")
    p.add_argument("--step", type=int, default=2, help="one axial slice every STEP mm")
    p.add_argument("--variants", type=int, default=3, help="augmented copies of each slice and look")
    p.add_argument("--looks", default=",".join(LOOKS), help=f"comma-separated subset of {', '.join(LOOKS)}")
    p.add_argument("--skull-share", type=float, default=0.5, help="share of slices given a scalp and skull "
                   "(the rest stay skull-stripped, as the template is)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0.0 <= args.skull_share <= 1.0:
        p.error(f"--skull-share is a share in [0, 1], got {args.skull_share}")
    looks = tuple(x.strip() for x in args.looks.split(",") if x.strip())
    if not looks or set(looks) - set(LOOKS):
        p.error(f"--looks: a comma-separated subset of {', '.join(LOOKS)}, got {args.looks!r}")
    if args.step < 1 or args.variants < 1:
        p.error("--step and --variants are positive integers")
    if args.probe:
        print(probe_table(probe(args.probe, *load_template(args.template_dir), step=args.step, seed=args.seed)))
        return 0
    if os.path.exists(args.out) and os.listdir(args.out):
        p.error(f"{args.out} exists and is not empty; remove it to write the collection again")
    partial = f"{args.out.rstrip('/')}.partial-{os.getpid()}"  # an interrupted run leaves no half collection
    shutil.rmtree(partial, ignore_errors=True)
    n = write_collection(*load_template(args.template_dir), partial, args.step, args.variants, args.seed,
                         looks=looks, skull_share=args.skull_share)
    if os.path.isdir(args.out):
        os.rmdir(args.out)  # empty (checked above)
    os.replace(partial, args.out)
    print(f"{n} tumor-free template slices written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
