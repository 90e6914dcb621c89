"""Has tonight's input moved away from what the model was validated on?

Two signals, both against the reference stored in the artifact by
`python -m trainer.ood build`:

- the share of images outside the training distribution (the OOD guard's
  flag), against its rate on the model's own validation images: drift when it
  exceeds max(3 x that rate, 10 %);
- the distribution of tumor probabilities, against the validation images'
  (10 bins), as a population stability index: a *warning* when PSI > 0.25,
  the usual "significant shift" level, but not drift: the score distribution
  also moves with the share of tumors in the input (validation is about half
  tumors). 150 random slices of the model's own training collection (72 %
  tumors) read PSI 0.27, so PSI alone would fail nights that are fine.

Nights with fewer than MIN_ROWS scored images are not assessed.
"""
import math

PSI_LIMIT = 0.25
OOD_RATE_FACTOR = 3.0
OOD_RATE_FLOOR = 0.10
MIN_ROWS = 50


def reference_of(metadata):
    """The part of the artifact's metadata drift needs, or None for an artifact without it."""
    ood = metadata.get("ood") or {}
    hist = metadata.get("reference_score_histogram")
    if not hist or "validation_false_ood_rate" not in ood:
        return None
    from beam_pipeline.summary import SCORE_BINS
    if len(hist) != SCORE_BINS:  # trainer.ood.SCORE_BINS and the pipeline's tally must agree
        return None
    return {"score_histogram": list(hist), "ood_rate": float(ood["validation_false_ood_rate"])}


def ood_limit(reference):
    """The share of out-of-distribution images above which the input has drifted from `reference`."""
    return max(OOD_RATE_FACTOR * reference["ood_rate"], OOD_RATE_FLOOR)


def psi(expected, actual, eps=1e-4):
    e_total, a_total = sum(expected) or 1, sum(actual) or 1
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e / e_total, eps), max(a / a_total, eps)
        total += (a - e) * math.log(a / e)
    return total


def assess(counts, reference):
    """A dict for _SUMMARY.json and the report; `drifted` makes the night exit 4 (unless --no-fail-on-drift)."""
    if reference is None:
        return {"assessed": False, "reason": "the model artifact has no reference (python -m trainer.ood build)"}
    scored = counts.get("by_status", {}).get("ok", 0)
    if scored < MIN_ROWS:
        return {"assessed": False, "reason": f"{scored} scored images; drift needs at least {MIN_ROWS}"}
    ood_rate = counts.get("out_of_distribution", 0) / scored
    limit = ood_limit(reference)
    score_psi = psi(reference["score_histogram"], counts.get("score_histogram") or [])
    reasons, warnings = [], []
    if ood_rate > limit:
        reasons.append(f"{ood_rate:.1%} of images are out of distribution (validation: "
                       f"{reference['ood_rate']:.1%}; limit {limit:.0%})")
    if score_psi > PSI_LIMIT:
        warnings.append(f"tumor-probability distribution differs from validation (PSI {score_psi:.2f} > "
                        f"{PSI_LIMIT}); expected when the share of tumors differs, a scanner change otherwise")
    return {"assessed": True, "drifted": bool(reasons), "reasons": reasons, "warnings": warnings,
            "scored_images": scored,
            "ood_rate": round(ood_rate, 4), "ood_rate_limit": round(limit, 4),
            "validation_ood_rate": reference["ood_rate"], "score_psi": round(score_psi, 4),
            "score_psi_limit": PSI_LIMIT}
