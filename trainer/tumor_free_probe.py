"""Tumor-free probe: how many slices of MRI from people without a tumor does each model flag?

Why: in every collection we train and validate on, the tumor-free slices sit at other levels or come from
another source than the tumor slices (docs/model_v4_notes.md), so validation specificity says little about
a healthy volunteer's scan or a patient with another bright lesion (stroke, MS), where issue 24's hidden
tests found v3 flagging a quarter to a third of slices. This probe scores a folder of such volumes (one
series each: a NIfTI volume, a multi-frame DICOM, or a folder of slice images) with brain-score itself, so
with the decoding, preprocessing and threshold a site gets, once per model, and summarises the image
tables: the share of slices flagged per volume, by fifth of the stack (in slice order, feet to head for
NIfTI), and the share the OOD guard marks.

  python -m trainer.tumor_free_probe --input ../data/tumor-free-probe \\
      --model models/brain-tumor-cnn/15 --model models/brain-tumor-cnn/13

Every slice is tumor-free, so each flagged slice is a false alarm. A probe, not a specificity: a handful of
people; and a volume a model trained on says nothing about it. The table names the volumes by file name:
run it on research volumes or on files whose names carry no patient identifier.

The look of a volume (FLAIR, T1, T1ce, T2, PD, ...) is read from a word of its file name
(`fpg_flair.nii.gz`, `healthy_t2.nii.gz`; "other" without one; screening_core/looks.py), and the table adds
the share flagged per look. With --write the per-look shares (counts and shares only, no volume names) go into
each model's metadata.json at the model's threshold, and the artifact is re-sealed: brain-score's run report
quotes them beside the external AUCs and beside each flagged series of a look where they are high, where a
reader looks before trusting a flag on a healthy T2 series.

`--planes sagittal,coronal` also cuts every NIfTI volume of 2.5 mm voxels or finer in those planes, as a viewer
shows them (screening_core.volumes.plane_frames), scores each plane's slices as a folder series and adds the
share flagged per plane (a model of axial slices flags half of a healthy head's sagittal slices:
docs/model_v4_notes.md, row PL); --write stores them beside the looks, and the run report quotes them beside a
flagged series in another plane.
"""
import argparse
import glob
import json
import os
import posixpath
import re
import subprocess
import sys
import tempfile

from screening_core import artifact, looks
from trainer import HelpFormatter, volume_slices

FIFTHS = 5


def _natural(text):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def summarise(rows, n_bins=FIFTHS):
    """{volume: {"n", "flagged", "ood", "by_fifth": [share flagged per fifth]}} from image-table rows.

    A volume is a file with several frames (NIfTI, multi-frame DICOM), ordered by frame; single-frame files
    are the slices of the folder that holds them, ordered by DICOM instance number where every one has it and
    by name otherwise. Rows that were not scored are left out."""
    by_file = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        name = posixpath.join(r["source_uri"], r["member_path"]) if r.get("member_path") else r["source_uri"]
        by_file.setdefault(name, []).append(r)
    volumes = {}  # keyed by the whole path: two folders may each hold a t1.nii.gz
    for name, members in by_file.items():
        if len(members) > 1:
            volumes[name] = sorted(members, key=lambda r: int(r.get("frame_index") or 0))
        else:
            volumes.setdefault(posixpath.dirname(name) + "/", []).append((name, members[0]))
    short = {}
    for key in volumes:  # the table names a volume by its file (or folder) name where that is unique
        short.setdefault(posixpath.basename(key.rstrip("/")) + ("/" if key.endswith("/") else ""), []).append(key)
    label = {k: name if len(keys) == 1 else k for name, keys in short.items() for k in keys}
    out = {}
    for key, members in sorted(volumes.items(), key=lambda kv: label[kv[0]]):
        vol = label[key]
        if key.endswith("/"):
            numbered = all(r.get("instance_number") is not None for _, r in members)
            members = [r for _, r in sorted(members, key=lambda t: (t[1]["instance_number"], _natural(t[0]))
                                            if numbered else _natural(t[0]))]
        flags = [r["predicted_label"] == "tumor" for r in members]
        n = len(flags)
        fifths = [flags[n * b // n_bins:n * (b + 1) // n_bins] for b in range(n_bins)]
        out[vol] = {"n": n, "flagged": round(sum(flags) / n, 4),
                    "ood": round(sum(r.get("in_distribution") is False for r in members) / n, 4),
                    "by_fifth": [round(sum(f) / len(f), 4) if f else None for f in fifths]}
    return out


def look_of(volume):
    """The look a volume's file (or folder) name names (screening_core.looks; 'other' without one)."""
    return looks.look_of(posixpath.basename(volume.rstrip("/")))


def _shares(volumes, key_of, order):
    """{key: {"volumes", "slices", "flagged", "highest_volume"}} over `summarise`'s volumes grouped by
    `key_of(volume name)`, in the order of `order`. `highest_volume`: the share of the group's volume flagged most,
    since the pooled share hides a head the model fails on beside heads it reads well (T2: a healthy head at 58 %
    beside two stroke patients' skull-stripped T2 at 18-23 % pooled to 27 %)."""
    out = {}
    for vol, r in volumes.items():
        a = out.setdefault(key_of(vol), {"volumes": 0, "slices": 0, "n_flagged": 0, "highest": 0.0})
        a["volumes"] += 1
        a["slices"] += r["n"]
        a["n_flagged"] += round(r["n"] * r["flagged"])
        a["highest"] = max(a["highest"], r["flagged"])
    return {key: {"volumes": a["volumes"], "slices": a["slices"],
                  "flagged": round(a["n_flagged"] / a["slices"], 4) if a["slices"] else 0.0,
                  "highest_volume": round(a["highest"], 4)}
            for key in order(out) for a in [out.get(key)] if a}


def by_look(volumes):
    """`_shares` per look, in screening_core.looks.NAMES order."""
    return _shares(volumes, look_of, lambda found: looks.NAMES)


def plane_series(input_dir, planes, out_dir):
    """Cut each NIfTI volume of `input_dir` that trainer.volume_slices may cut in `planes` into 8-bit PNG slices,
    `<out_dir>/<volume>-<plane>/` (one folder series each; the head's slices only, as that collection keeps
    them); the volumes cut."""
    from PIL import Image
    cut = []
    for path in sorted(glob.glob(os.path.join(input_dir, "*.nii")) + glob.glob(os.path.join(input_dir, "*.nii.gz"))):
        if not all(volume_slices.can_cut(path, plane) for plane in planes):
            continue
        name = os.path.basename(path).split(".")[0]
        for plane in planes:
            frames, keep, top = volume_slices.head_frames(path, plane)
            folder = os.path.join(out_dir, f"{name}-{plane}")
            os.makedirs(folder, exist_ok=True)
            for k in keep:
                Image.fromarray(volume_slices.to_uint8(frames[k], top)).save(os.path.join(folder, f"{k:04d}.png"))
        cut.append(path)
    return cut


def plane_of(volume):
    """The plane a `plane_series` folder was cut in, from its name."""
    return volume.rstrip("/").rsplit("-", 1)[-1]


def by_plane(volumes):
    """`_shares` per plane of `plane_series` folders."""
    return _shares(volumes, plane_of, sorted)


def write_to_artifact(version_dir, volumes, plane_volumes=None):
    """Store the per-look shares in the artifact's metadata.json at its threshold and re-seal it.

    Only counts and shares: volume names stay out of the artifact (a site's file names may carry
    identifiers). model.keras is untouched, so the ONNX binding holds; the contract refuses the figures
    once the threshold changes (screening_core.artifact.contract_problems)."""
    per_look = by_look(volumes)
    n = sum(a["slices"] for a in per_look.values())

    def add_probe(metadata):
        metadata["tumor_free_probe"] = {
            "threshold": metadata["threshold"], "volumes": len(volumes), "slices": n,
            "flagged": round(sum(a["slices"] * a["flagged"] for a in per_look.values()) / n, 4) if n else 0.0,
            "looks": per_look, "what": "share of slices of real heads without a tumor that the model flags at its "
                                    "threshold, by look (python -m trainer.tumor_free_probe; docs/tumor_free_probe.md)"}
        if plane_volumes:
            metadata["tumor_free_probe"]["planes"] = by_plane(plane_volumes)
    artifact.update_metadata(version_dir, add_probe)


def score(input_dir, model, out_dir):
    """Run brain-score on `input_dir` with `model` into `out_dir`; the image table's rows."""
    import pyarrow.parquet as pq
    cmd = [sys.executable, "-m", "beam_pipeline.run", "--input", input_dir, "--output", out_dir, "--model", model,
           "--no-report", "--no-heatmaps", "--keep-paths", "--no-fail-on-drift",  # a check's looks drift by design
           "--allow-member-model"]  # it measures a model, an ensemble's member included; it screens no night
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"brain-score exited {done.returncode} for {model}:\n{done.stderr[-2000:]}")
    files = sorted(glob.glob(os.path.join(out_dir, "results", "images-*.parquet")))
    if not files:
        raise SystemExit(f"brain-score wrote no image table under {out_dir}")
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def table(result):
    """Markdown: one row per model and volume, the share flagged overall and per fifth, and the OOD share."""
    lines = ["| model | volume | slices | flagged | " + " | ".join(f"fifth {b + 1}" for b in range(FIFTHS))
             + " | out of distribution |", "|---|---|---|---|" + "---|" * FIFTHS + "---|"]
    for model, volumes in result.items():
        for vol, r in volumes.items():
            cells = " | ".join("-" if s is None else f"{100 * s:.0f} %" for s in r["by_fifth"])
            lines.append(f"| {model} | {vol} | {r['n']} | {100 * r['flagged']:.1f} % | {cells} | {100 * r['ood']:.0f} % |")
        n = sum(r["n"] for r in volumes.values())
        if len(volumes) > 1 and n:
            flagged = sum(r["n"] * r["flagged"] for r in volumes.values()) / n
            mean = sum(r["flagged"] for r in volumes.values()) / len(volumes)
            lines.append(f"| {model} | all ({len(volumes)} volumes) | {n} | {100 * flagged:.1f} % "
                         f"(mean of volumes {100 * mean:.1f} %) |" + " |" * FIFTHS + " |")
            for look, a in by_look(volumes).items():
                lines.append(f"| {model} | {looks.NAMES[look]} ({a['volumes']} volumes) | {a['slices']} | "
                             f"{100 * a['flagged']:.1f} % |" + " |" * FIFTHS + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.tumor_free_probe", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--input", required=True, help="folder of tumor-free volumes (NIfTI, DICOM, or one folder of "
                   "slice images per volume)")
    p.add_argument("--model", action="append", required=True, help="model artifact folder; repeat to compare")
    p.add_argument("--output", default="", help="keep each model's brain-score output under this folder "
                   "(empty: a temporary folder, removed afterwards)")
    p.add_argument("--json", default="", help="also write the result as JSON here ({model: {volume: figures}}; "
                   "with --planes also \"planes\": {model: {plane: shares}})")
    p.add_argument("--write", action="store_true", help="store each model's shares flagged by look in its "
                   "metadata.json (re-sealed) for the run report; only with every volume tumor-free")
    p.add_argument("--planes", default="", metavar="PLANE[,PLANE]",
                   help="also cut the NIfTI volumes in these planes (sagittal, coronal) and add the share flagged "
                        "per plane")
    args = p.parse_args(argv)
    planes = tuple(x.strip() for x in args.planes.split(",") if x.strip())
    if any(x not in ("sagittal", "coronal") for x in planes) or len(set(planes)) != len(planes):
        p.error(f"--planes takes distinct planes of sagittal, coronal; got {args.planes!r}")
    if not os.path.isdir(args.input):
        p.error(f"--input {args.input}: not a folder (docs/tumor_free_probe.md lists public tumor-free volumes "
                "and where to get them)")
    for m in args.model:
        if not os.path.exists(os.path.join(m, "metadata.json")):
            p.error(f"--model {m}: not a model artifact (no metadata.json)")
    with tempfile.TemporaryDirectory(prefix="tumor-free-probe-") as tmp:
        root = args.output or tmp
        result, plane_result = {}, {}
        cut = plane_series(args.input, planes, os.path.join(tmp, "planes")) if planes else []
        if planes and not cut:
            p.error(f"--planes: no NIfTI volume of {args.input} has voxels of {volume_slices.MAX_RESLICE_MM} mm or finer")
        for i, m in enumerate(args.model):
            name = os.path.basename(os.path.normpath(m))
            label = name if name not in result else f"{name} ({i + 1})"
            out = os.path.join(root, f"{i + 1}-{name}")
            print(f"scoring {args.input} with {m} ...", file=sys.stderr, flush=True)
            result[label] = summarise(score(args.input, m, out))
            if not result[label]:
                raise SystemExit(f"brain-score scored no slice of {args.input} with {m}")
            if planes:
                print(f"scoring {len(cut)} volumes cut {', '.join(planes)} with {m} ...", file=sys.stderr, flush=True)
                plane_result[label] = summarise(score(os.path.join(tmp, "planes"), m, out + "-planes"))
            if args.write:
                write_to_artifact(m, result[label], plane_result.get(label))
    print(table(result))
    for label, volumes in plane_result.items():
        print("\n".join(f"| {label} | {plane} ({a['volumes']} volumes) | {a['slices']} | {100 * a['flagged']:.1f} % "
                        f"(one head {100 * a['highest_volume']:.0f} %) |" for plane, a in by_plane(volumes).items()))
    if args.json:  # {model: {volume: figures}}, and with --planes "planes": {model: {plane: shares}} beside them
        with open(args.json, "w") as f:
            json.dump({**result, **({"planes": {label: by_plane(v) for label, v in plane_result.items()}}
                                    if planes else {})}, f, indent=2)
    if args.output:
        print(f"brain-score outputs: {args.output}", file=sys.stderr)
    if args.write:
        print("stored in: " + ", ".join(os.path.join(m, "metadata.json") for m in args.model), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
