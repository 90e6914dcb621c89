"""brain-validate: measure the model on a site's own labelled images before using it there.

  brain-validate --sample /data/local-validation --output validation/
  brain-validate --scores out/2026-11-20 --labels labels.csv --output validation/

A sample folder holds images (or archives) under class folders (`tumor/`,
`notumor/`, ...); they are scored with brain-score's own pipeline (paths
pseudonymised as always; labels are joined by the same keyed pseudonyms).
Or take the output of an earlier brain-score run and a labels CSV keyed by
`sop_instance_uid`, `member_path` or `source_uri`, with a `label` column
(1/0 or tumor/no_tumor) and optional `group` (patient/study) and `subgroup`
(e.g. series description) columns.

Writes validation.json, validation.html and site_profile.json (the site
threshold for --target-sensitivity, bound to the model's sha256) and prints
a plain verdict. Exit 0 when the verdict is met, 3 when not, 2 on bad input.
"""
import argparse
import base64
import csv
import html
import io
import json
import os
import sys

import numpy as np

POSITIVE = {"tumor", "tumour", "yes", "positive", "glioma", "meningioma", "pituitary", "1"}
NEGATIVE = {"notumor", "no_tumor", "no-tumor", "no", "negative", "normal", "0"}


class ValidationError(ValueError):
    pass


def _label_of_path(rel):
    """Label from the nearest class folder of a path relative to the sample root (None if none)."""
    for part in reversed(rel.replace("\\", "/").split("/")[:-1]):
        if part.lower() in POSITIVE:
            return 1
        if part.lower() in NEGATIVE:
            return 0
    return None


def _label_value(text):
    t = str(text).strip().lower()
    if t in POSITIVE:
        return 1
    if t in NEGATIVE:
        return 0
    raise ValidationError(f"label {text!r} is neither tumor (1/tumor/yes) nor no tumor (0/no_tumor/no)")


def sample_labels(sample, key):
    """{pseudonymised source_uri: (label, group, subgroup)} for the files under `sample`."""
    from beam_pipeline import pseudonym
    ps = pseudonym.Pseudonymiser(key)
    out = {}
    for root, _, files in os.walk(sample):
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, sample)
            label = _label_of_path(rel)
            if label is None:
                continue
            parts = rel.split(os.sep)
            subgroup = parts[0] if len(parts) > 2 and _label_of_path(parts[0] + "/x") is None else ""
            out[ps.uri(path)] = (label, ps.uri(path), subgroup)
    if not out:
        raise ValidationError(f"{sample}: no images under class folders ({sorted(POSITIVE)} / {sorted(NEGATIVE)})")
    return out


def csv_labels(path):
    """(key column, {key: (label, group, subgroup)}) from a labels CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        key_col = next((c for c in ("sop_instance_uid", "member_path", "source_uri") if c in cols), None)
        if key_col is None or "label" not in cols:
            raise ValidationError(f"{path}: needs a 'label' column and one of sop_instance_uid, member_path, "
                                  f"source_uri; has {cols}")
        out = {}
        for r in reader:
            out[r[key_col]] = (_label_value(r["label"]), r.get("group") or r[key_col], r.get("subgroup") or "")
    return key_col, out


def join(rows, key_col, labels):
    """(y, p, groups, subgroups, in_distribution, unmatched) over scored rows that have a label."""
    y, p, g, sg, ind = [], [], [], [], []
    matched = set()
    for r in rows:
        if r["status"] != "ok":
            continue
        key = r[key_col] if key_col != "member_path" or r["member_path"] else r["source_uri"]
        if key not in labels:
            continue
        label, group, subgroup = labels[key]
        matched.add(key)
        y.append(label)
        p.append(r["tumor_probability"])
        g.append(r.get("study_instance_uid") or group)
        sg.append(subgroup or r.get("modality") or "")
        ind.append(r.get("in_distribution"))
    return (np.array(y), np.array(p, np.float64), np.array(g), np.array(sg), ind,
            len(set(labels) - matched))


def wilson_lower(proportion, n, z=1.96):
    """Lower bound of the Wilson score interval for a proportion observed on n independent units."""
    if n == 0:
        return 0.0
    centre = proportion + z * z / (2 * n)
    spread = z * np.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n))
    return float((centre - spread) / (1 + z * z / n))


def evaluate(y, p, groups, subgroups, in_dist, artifact_threshold, target, required_lower, bootstrap=1000):
    from trainer import metrics
    if len(y) < 10 or y.sum() == 0 or y.sum() == len(y):
        raise ValidationError(f"{len(y)} labelled images with {int(y.sum())} tumors: need both classes "
                              "and at least 10 images")
    site_threshold = metrics.choose_threshold(y, p, target)
    at_artifact = metrics.evaluate_at(y, p, artifact_threshold, groups, bootstrap)
    at_site = metrics.evaluate_at(y, p, site_threshold, groups, bootstrap)
    # The bootstrap at a threshold chosen on the same images is optimistic (a threshold below every
    # tumor gives [1, 1]); the Wilson bound over the tumor patients/studies is not. The verdict takes the lower.
    n_pos_groups = len(np.unique(groups[y == 1]))
    wilson = wilson_lower(at_site["sensitivity"], n_pos_groups)
    lower = min(at_site.get("ci95", {}).get("sensitivity", [1.0])[0], wilson)
    meets = bool(lower >= required_lower)
    verdict = (f"At the site threshold {site_threshold:.4f}, sensitivity is {at_site['sensitivity']:.3f} "
               f"(lower 95% bound {lower:.3f}; {int(y.sum())} tumor images in {n_pos_groups} patients/studies) "
               f"and specificity {at_site['specificity']:.3f}. "
               + (f"The lower CI bound {lower:.3f} meets the required {required_lower:.3f}."
                  if meets else
                  f"The lower CI bound {lower:.3f} is below the required {required_lower:.3f}: do not rely on "
                  "the model here yet; add labelled studies (docs/new_site.md) or review its errors."))
    by_subgroup = {}
    for s in sorted(set(subgroups.tolist())):
        m = subgroups == s
        by_subgroup[s or "(all)"] = metrics.evaluate_at(y[m], p[m], site_threshold, groups[m], 0)
    known = [v for v in in_dist if v is not None]
    return {"n_images": int(len(y)), "n_positive": int(y.sum()), "n_groups": int(len(np.unique(groups))),
            "roc_auc": metrics.roc_auc(y, p), "auc_ci95": at_site.get("ci95", {}).get("auc"),
            "target_sensitivity": target, "required_sensitivity_lower_bound": required_lower,
            "artifact_threshold": artifact_threshold, "at_artifact_threshold": at_artifact,
            "site_threshold": site_threshold, "at_site_threshold": at_site,
            "sensitivity": at_site["sensitivity"], "sensitivity_ci95": at_site["ci95"]["sensitivity"],
            "sensitivity_wilson_lower95": wilson, "sensitivity_lower95": lower,
            "specificity": at_site["specificity"], "specificity_ci95": at_site["ci95"]["specificity"],
            "calibration": metrics.calibration_curve(y, p),
            "expected_calibration_error": metrics.expected_calibration_error(y, p),
            "out_of_distribution_share": (float(np.mean([not v for v in known])) if known else None),
            "by_subgroup": by_subgroup, "meets": meets, "verdict": verdict}


def _calibration_png(curve):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="#999")
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "o-", color="#4c72b0")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("share with tumor")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(result, metadata):
    def fmt(m, k):
        ci = (m.get("ci95") or {}).get(k)
        v = m.get(k)
        return "n/a" if v is None else f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{m['n']}</td><td>{m['n_positive']}</td>"
                   f"<td>{fmt(m, 'sensitivity')}</td><td>{fmt(m, 'specificity')}</td></tr>"
                   for name, m in result["by_subgroup"].items())
    a, s = result["at_artifact_threshold"], result["at_site_threshold"]
    ci = result["auc_ci95"]
    auc_ci = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Local validation</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1000px}} td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse}} .{'meets' if result['meets'] else 'fails'}{{padding:8px 12px;border:1px solid;
background:{'#d4edda' if result['meets'] else '#f8d7da'}}}</style></head><body>
<h1>Local validation of {html.escape(metadata['name'])} v{html.escape(str(metadata['version']))}</h1>
<p class="{'meets' if result['meets'] else 'fails'}" id="verdict">{html.escape(result['verdict'])}</p>
<p>{result['n_images']} images, {result['n_positive']} with tumor, {result['n_groups']} groups (patients/studies);
AUC {result['roc_auc']:.3f}{auc_ci};
out of distribution: {'n/a' if result['out_of_distribution_share'] is None else f"{result['out_of_distribution_share']:.1%}"}.</p>
<table><tr><th>threshold</th><th>value</th><th>sensitivity (95% CI)</th><th>specificity (95% CI)</th></tr>
<tr><td>model's own</td><td>{result['artifact_threshold']:.4f}</td><td>{fmt(a, 'sensitivity')}</td><td>{fmt(a, 'specificity')}</td></tr>
<tr><td>site (target sensitivity {result['target_sensitivity']})</td><td>{result['site_threshold']:.4f}</td>
<td>{fmt(s, 'sensitivity')}</td><td>{fmt(s, 'specificity')}</td></tr></table>
<h2>By subgroup (site threshold)</h2><table><tr><th>subgroup</th><th>images</th><th>tumor</th><th>sensitivity</th>
<th>specificity</th></tr>{rows}</table>
<h2>Calibration</h2><img id="calibration" alt="calibration curve" src="data:image/png;base64,{_calibration_png(result['calibration'])}">
</body></html>"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="brain-validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--sample", help="folder of labelled images (class folders), scored here")
    src.add_argument("--scores", help="output of an earlier brain-score run (with --labels)")
    parser.add_argument("--labels", help="labels CSV for --scores")
    parser.add_argument("--output", required=True, help="folder for validation.json/.html and site_profile.json")
    parser.add_argument("--model", default=None, help="model artifact (default: brain-score's default)")
    parser.add_argument("--target-sensitivity", type=float, default=0.95, help="(default: %(default)s)")
    parser.add_argument("--required-lower-bound", type=float, default=0.90,
                        help="the verdict is met when the sensitivity's lower 95%% CI bound at the site threshold "
                             "reaches this (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    args = parser.parse_args(argv)
    from beam_pipeline import cli, model_store, pseudonym, run, site_profile
    cli.quiet_tensorflow()
    try:
        if args.scores and not args.labels:
            raise ValidationError("--scores needs --labels")
        if not 0 < args.target_sensitivity < 1 or not 0 < args.required_lower_bound < 1:
            raise ValidationError("--target-sensitivity and --required-lower-bound must be in (0, 1)")
        model, _ = model_store.resolve(args.model or model_store.DEFAULT_MODEL)
        metadata = model_store.metadata(model)
        if args.sample:
            key = pseudonym.load_or_create_key(os.environ.get("BRAIN_SCREENING_PSEUDONYM_KEY",
                                                              pseudonym.DEFAULT_KEY_FILE))
            sample = os.path.abspath(args.sample)
            labels, key_col = sample_labels(sample, key), "source_uri"
            scores = os.path.join(args.output, "scores")
            run.run(["--input", sample, "--output", scores, "--model", model, "--no-heatmaps", "--no-report",
                     "--log-format", "text"])
        else:
            key_col, labels = csv_labels(args.labels)
            scores = args.scores
        import pyarrow.parquet as pq
        summary = run.read_summary(scores)
        if summary["model"]["model_sha256"] != metadata["model_sha256"]:
            raise ValidationError(f"{scores} was scored with another model ({summary['model']['model_name']} "
                                  f"v{summary['model']['model_version']}); validate the model that scored it")
        rows = pq.read_table(summary["result"]["output_files"]).to_pylist()
        y, p, groups, subgroups, in_dist, unmatched = join(rows, key_col, labels)
        result = evaluate(y, p, groups, subgroups, in_dist, float(metadata["threshold"]), args.target_sensitivity,
                          args.required_lower_bound, args.bootstrap)
        result["unmatched_labels"] = unmatched
    except (ValidationError, run.JobError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "validation.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.output, "validation.html"), "w") as f:
        f.write(render_html(result, metadata))
    profile = site_profile.build(metadata, result["site_threshold"], args.target_sensitivity, {
        k: result[k] for k in ("n_images", "n_positive", "n_groups", "roc_auc", "sensitivity", "sensitivity_ci95",
                               "specificity", "specificity_ci95", "meets", "verdict")})
    with open(os.path.join(args.output, "site_profile.json"), "w") as f:
        json.dump(profile, f, indent=2)
    print(result["verdict"])
    for name in ("validation.html", "validation.json", "site_profile.json"):
        print(f"  {os.path.join(args.output, name)}")
    return 0 if result["meets"] else 3


if __name__ == "__main__":
    sys.exit(main())
