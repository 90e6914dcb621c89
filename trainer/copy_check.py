"""Copy check: does the model read a slice the way copies of scans bring it?

Web collections, screenshots, secondary captures and teaching files reach a model as copies: framed,
annotated, re-encoded, turned. Session 31 found v35 losing a third of brain-mri's tumors inside a white
frame (preprocessing, not the model: fixed by preprocessing v2; docs/model_v4_notes.md rows FRM, TXT).
This scores a seeded draw of a source's validation images as they are and changed in each such way,
through the artifact's own preprocessing and its ONNX graph, at its threshold:

  python -m trainer.copy_check models/brain-tumor-cnn/36 [--source brain-mri] [--per-class 80]

Not a metric: the draw is small and the changes are ours. Compare models, or preprocessing ids.
"""
import io
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from trainer import HelpFormatter


def _text(img):
    out = img.copy()
    draw, (w, h) = ImageDraw.Draw(out), out.size
    draw.text((4, 4), "R  SE 12/1  TR 500", fill=255)
    draw.text((4, h - 14), "W 1200 L 600  12mm", fill=255)
    draw.text((w - 30, h // 2), "L", fill=255)
    draw.line((w - 60, h - 8, w - 10, h - 8), fill=255, width=2)
    return out


def _corner_text(img):
    """A viewer's overlay: lines of patient, series and window text in all four corners."""
    from PIL import ImageFont
    out = img.copy()
    draw, (w, h) = ImageDraw.Draw(out), out.size
    s = min(w, h)
    font, step, right = ImageFont.load_default(size=max(8, round(0.035 * s))), round(0.045 * s), w - round(0.3 * s)
    for i, line in enumerate(["ANON^PATIENT", "ID 0000000", "12-Mar-2019", "SE: 4 IM: 12"]):
        draw.text((3, 3 + i * step), line, fill=255, font=font)
    for i, line in enumerate(["Hospital", "1.5T", "AX FLAIR"]):
        draw.text((right, 3 + i * step), line, fill=255, font=font)
    for i, line in enumerate(["TR 9000", "TE 120", "ST 5.0mm"]):
        draw.text((3, h - 3 - (3 - i) * step), line, fill=255, font=font)
    draw.text((right, h - 3 - step), "W 1400 L 700", fill=255, font=font)
    return out


def _letters_and_bar(img):
    """Orientation letters at the edges' midpoints and a ruler with ticks at the right edge."""
    from PIL import ImageFont
    out = img.copy()
    draw, (w, h) = ImageDraw.Draw(out), out.size
    s = min(w, h)
    font = ImageFont.load_default(size=max(8, round(0.06 * s)))
    for xy, letter in (((w // 2, 2), "A"), ((w // 2, h - round(0.08 * s)), "P"), ((2, h // 2), "R"),
                       ((w - round(0.07 * s), h // 2), "L")):
        draw.text(xy, letter, fill=230, font=font)
    x = w - round(0.12 * s)
    draw.line((x, round(0.3 * h), x, round(0.7 * h)), fill=255, width=max(1, s // 150))
    for k in range(11):
        y = round(0.3 * h + k * 0.04 * h)
        draw.line((x - round(0.015 * s), y, x, y), fill=255, width=1)
    return out


def _jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _gamma(img, g):
    return Image.fromarray((255 * (np.asarray(img) / 255.0) ** g).astype(np.uint8))


def variants(img, rng):
    """(name, changed copy) of an 8-bit grayscale PIL image, the plain one first."""
    w, h = img.size
    pad = max(2, round(0.1 * min(w, h)))
    noisy = np.clip(np.asarray(img, np.float32) + rng.normal(0, 10, (h, w)), 0, 255).astype(np.uint8)
    return [
        ("as it is", img),
        ("white frame (10 % of the side)", ImageOps.expand(img, pad, fill=255)),
        ("grey frame (10 %)", ImageOps.expand(img, pad, fill=128)),
        ("black margin (25 %)", ImageOps.expand(img, 2 * pad + pad // 2, fill=0)),
        ("burned-in text and scale bar", _text(img)),
        ("text in the four corners", _corner_text(img)),
        ("orientation letters and a ruler", _letters_and_bar(img)),
        ("inverted", ImageOps.invert(img)),
        ("turned 90 degrees", img.rotate(90, expand=True)),
        ("upside down", img.rotate(180)),
        ("flipped top to bottom", ImageOps.flip(img)),  # a volume saved as images with its rows reversed
        ("turned 270 degrees", img.rotate(270, expand=True)),
        ("turned 15 degrees", img.rotate(15, resample=Image.Resampling.BILINEAR)),
        ("mirrored", ImageOps.mirror(img)),
        ("cut to 80 %", img.crop((w // 10, h // 10, w - w // 10, h - h // 10))),
        ("JPEG quality 30", _jpeg(img, 30)),
        ("gamma 0.6", _gamma(img, 0.6)),
        ("gamma 1.6", _gamma(img, 1.6)),
        ("noise (sd 10)", Image.fromarray(noisy)),
        ("blur (radius 1.5)", img.filter(ImageFilter.GaussianBlur(1.5))),
    ]


def draw(artifact_dir, source, per_class, seed):
    """{label: [paths]}: up to `per_class` validation images of `source` per label, drawn with `seed`."""
    from trainer.artifact_data import split_rows
    rows = [r for r in split_rows(artifact_dir) if r["split"] == "validation" and r["source"] == source
            and os.path.exists(r["path"])]
    rng = np.random.default_rng(seed)
    out = {}
    for label in (0, 1):
        paths = sorted(r["path"] for r in rows if int(r["label"]) == label)
        out[label] = [paths[i] for i in sorted(rng.choice(len(paths), min(per_class, len(paths)), replace=False))]
    return out


def check(artifact_dir, source="brain-mri", per_class=80, seed=0):
    """{variant: {"tumors_found", "tumor_free_flagged", "n_tumor", "n_tumor_free"}} at the artifact's threshold."""
    import onnxruntime as ort

    from screening_core import artifact, preprocessing
    try:
        md = artifact.verify(artifact_dir)
    except (artifact.ArtifactError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    if not os.path.exists(os.path.join(artifact_dir, "validation_predictions.csv")):
        raise SystemExit(f"error: {artifact_dir} has no validation_predictions.csv (its scored rows choose the images)")
    onnx_path = os.path.join(artifact_dir, "model.onnx")
    if not os.path.exists(onnx_path):
        raise SystemExit(f"{artifact_dir} has no model.onnx: python -m trainer.export {artifact_dir}")
    spec, threshold = preprocessing.InputSpec.from_dict(md["input_spec"]), float(md["threshold"])
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    drawn = draw(artifact_dir, source, per_class, seed)
    if not drawn[0] or not drawn[1]:
        raise SystemExit(f"{artifact_dir}: no validation images of {source!r} of both labels on this machine")
    probs, rng = {}, np.random.default_rng(seed)
    for label, paths in drawn.items():
        for path in paths:
            with open(path, "rb") as f:
                img = Image.fromarray(preprocessing.decode_raster(f.read()).clip(0, 255).astype(np.uint8))
            for variant, copy in variants(img, rng):
                buf = io.BytesIO()
                copy.save(buf, "PNG")
                x = preprocessing.prepare(preprocessing.decode_raster(buf.getvalue()), spec)[None]
                p = float(np.asarray(session.run(None, {name: x.astype(np.float32)})[0]).reshape(-1)[0])
                probs.setdefault(variant, {0: [], 1: []})[label].append(p)
    return {v: {"tumors_found": float(np.mean(np.array(d[1]) >= threshold)),
                "tumor_free_flagged": float(np.mean(np.array(d[0]) >= threshold)),
                "n_tumor": len(d[1]), "n_tumor_free": len(d[0])} for v, d in probs.items()}


def table(result):
    lines = ["| copy | tumors found | tumor-free flagged |", "|---|---|---|"]
    lines += [f"| {v} | {r['tumors_found']:.0%} | {r['tumor_free_flagged']:.0%} |" for v, r in result.items()]
    return "\n".join(lines)


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m trainer.copy_check", description=__doc__,
                                formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("artifact")
    p.add_argument("--source", default="brain-mri", help="whose validation images (a source of its scored rows)")
    p.add_argument("--per-class", type=int, default=80, help="images drawn per label")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="write the result as JSON here as well")
    args = p.parse_args(argv)
    if args.per_class < 1:
        p.error("--per-class must be >= 1")
    result = check(args.artifact, args.source, args.per_class, args.seed)
    print(table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
