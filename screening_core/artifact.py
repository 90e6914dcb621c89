"""The versioned model artifact: the contract between trainer and scorer.

Layout (documented in models/README.md):
  <model-dir>/<name>/<version>/model.keras     Keras 3 native format
  <model-dir>/<name>/<version>/metadata.json   see `build_metadata`
  <model-dir>/<name>/<version>/model_card.md, eda/, plots and predictions

  <model-dir>/<name>/<version>/SHA256SUMS      sha256 of model.keras and metadata.json

`metadata.json` carries the sha256 of model.keras, and SHA256SUMS (sha256sum's
format, checkable with `sha256sum -c`) covers both files that decide a score:
loaders verify them before deserialising, so a truncated or swapped model, or a
threshold or input size edited in metadata.json, is never scored. It guards
against accidents and half-copied folders, not against someone who rewrites
the sums too (that would need a signature).
"""
import datetime
import hashlib
import json
import os

from screening_core import preprocessing

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
MODEL_CARD_FILE = "model_card.md"
PREDICTIONS_FILE = "validation_predictions.csv"
SUMS_FILE = "SHA256SUMS"
SEALED_FILES = (MODEL_FILE, METADATA_FILE)
OPTIONAL_SEALED_FILES = ("ood_reference.npz", "model.onnx", "development_fingerprints.npz")  # sealed when present
# (trainer/ood.py, export.py, development_set.py)


class ArtifactError(ValueError):
    """A model artifact is missing, incomplete or does not match its metadata."""


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def build_metadata(*, name, version, model_sha256, input_spec, class_names, threshold,
                   target_sensitivity, validation_metrics, data_fingerprint, training_config,
                   extra=None):
    """The metadata dict; every key here is documented in models/README.md."""
    import keras
    import tensorflow as tf
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": str(version),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "framework": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "model_file": MODEL_FILE,
        "model_sha256": model_sha256,
        "input_spec": input_spec.to_dict(),
        "output": {"name": "tumor_probability", "positive_label": "tumor",
                   "negative_label": "no_tumor", "class_names": class_names},
        "threshold": float(threshold),
        "threshold_target_sensitivity": float(target_sensitivity),
        "validation_metrics": validation_metrics,
        "data_fingerprint": data_fingerprint,
        "training_config": training_config,
        **(extra or {}),
    }


def write_artifact(model, version_dir, metadata_fields):
    """Save model.keras, hash it and write metadata.json; returns the metadata."""
    os.makedirs(version_dir, exist_ok=True)
    model_path = os.path.join(version_dir, MODEL_FILE)
    model.save(model_path)
    metadata = build_metadata(model_sha256=sha256_file(model_path), **metadata_fields)
    with open(os.path.join(version_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    seal(version_dir)
    return metadata


def seal(version_dir):
    """(Re)write SHA256SUMS; every tool that changes metadata.json on purpose calls this."""
    names = [*SEALED_FILES, *(n for n in OPTIONAL_SEALED_FILES if os.path.exists(os.path.join(version_dir, n)))]
    lines = [f"{sha256_file(os.path.join(version_dir, name))}  {name}\n" for name in names]
    tmp = os.path.join(version_dir, SUMS_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, os.path.join(version_dir, SUMS_FILE))


def update_metadata(version_dir, change):
    """Apply `change(metadata)` (in place) to metadata.json, write it back atomically and re-seal; returns it.

    Every tool that adds to an artifact after training (ONNX export, OOD reference, map level, tumor-free
    probe, generalisation checks) goes through here, so none leaves the file half written or unsealed."""
    path = os.path.join(version_dir, METADATA_FILE)
    with open(path) as f:
        metadata = json.load(f)
    change(metadata)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    seal(version_dir)
    return metadata


def check_sums(version_dir):
    """Raise ArtifactError unless SHA256SUMS exists and matches every sealed file."""
    path = os.path.join(version_dir, SUMS_FILE)
    if not os.path.exists(path):
        raise ArtifactError(f"{version_dir}: no {SUMS_FILE}; if this artifact is trusted, seal it with "
                            f"python -m screening_core.artifact seal {version_dir}")
    with open(path) as f:
        listed = dict(reversed(line.rstrip("\n").split("  ", 1)) for line in f if line.strip())
    present = [n for n in OPTIONAL_SEALED_FILES if n in listed or os.path.exists(os.path.join(version_dir, n))]
    for name in [*SEALED_FILES, *present]:
        if name not in listed:
            raise ArtifactError(f"{path} does not cover {name}")
        if not os.path.exists(os.path.join(version_dir, name)):
            raise ArtifactError(f"{version_dir}: {name} is missing")
        actual = sha256_file(os.path.join(version_dir, name))
        if actual != listed[name]:
            raise ArtifactError(f"{version_dir}/{name} was changed after the artifact was sealed (sha256 "
                                f"{actual[:12]}... is not {listed[name][:12]}... in {SUMS_FILE}); refusing to "
                                "load. Restore it, or re-seal if the change is intended")


def read_metadata(version_dir):
    path = os.path.join(version_dir, METADATA_FILE)
    if not os.path.exists(path):
        raise ArtifactError(f"{version_dir}: no {METADATA_FILE}; not a model artifact")
    with open(path) as f:
        metadata = json.load(f)
    missing = [k for k in ("format_version", "name", "version", "model_sha256", "input_spec",
                           "threshold") if k not in metadata]
    if missing:
        raise ArtifactError(f"{path}: missing keys {missing}")
    if metadata["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {metadata['format_version']} is not "
                            f"{FORMAT_VERSION}")
    return metadata


# An ensemble's member (a classifier or lesion map scored only inside v29 and its kin): {"ensembles": [...],
# "reason": "..."}. The scorers refuse it unless told otherwise: alone such a model can be far worse than its card's
# ensemble (v28 ranks brain-mri at AUC 0.44), and the version number alone does not say so.
MEMBER_KEY = "member_of"


def member_note(metadata):
    """The sentence that says an artifact is an ensemble's member, not a screening model alone; None otherwise."""
    member = metadata.get(MEMBER_KEY)
    if not member:
        return None
    return (f"{metadata.get('name')} v{metadata.get('version')} is a member of {', '.join(member['ensembles'])}, "
            f"not a screening model alone: {member['reason']}")


MEMBER_STATUS_HEADING = "## Status: an ensemble's member, not a model to run alone"


def with_member_status(card, metadata):
    """The model card with its member status section right under its title (replacing an older one), or
    without one when the artifact is no member: the card is the first thing a reader opens, and a member's card
    otherwise reads like a screening model's."""
    lines = card.split("\n")
    if MEMBER_STATUS_HEADING in lines:  # drop the old section: its heading up to the next heading
        start = lines.index(MEMBER_STATUS_HEADING)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + lines[end:]
    note = member_note(metadata)
    if note:
        lines[1:1] = ["", MEMBER_STATUS_HEADING, f"{note.rstrip('.')}. brain-score and brain-validate refuse it alone unless "
                      "told `--allow-member-model`; score its ensemble instead."]
    return "\n".join(lines)


def _member_problem(member):
    """Why a `member_of` value breaks the contract (None when it holds): the one check of its shape, for the
    loaders (`contract_problems`) and for `mark_member`, which writes it."""
    if not isinstance(member, dict):
        return f"{MEMBER_KEY} {member!r} is not {{'ensembles': [names], 'reason': text}}"
    ensembles, reason = member.get("ensembles"), member.get("reason")
    if not isinstance(ensembles, list) or not ensembles or not all(isinstance(e, str) and e.strip() for e in ensembles):
        return f"{MEMBER_KEY} names no ensemble the artifact is a member of (--of), got {ensembles!r}"
    if not isinstance(reason, str) or not reason.strip():
        return f"{MEMBER_KEY} says no reason why the artifact is not a screening model alone (--reason)"
    return None


def mark_member(version_dir, ensembles, reason):
    """Record in metadata.json (re-sealed) that the artifact is scored only inside `ensembles`."""
    member = {"ensembles": [e.strip() for e in ensembles], "reason": reason.strip()}
    problem = _member_problem(member)
    if problem:
        raise ArtifactError(problem)
    read_metadata(version_dir)  # a folder that is no artifact is refused before anything is written
    metadata = update_metadata(version_dir, lambda md: md.__setitem__(MEMBER_KEY, member))
    card = os.path.join(version_dir, MODEL_CARD_FILE)
    if os.path.exists(card):
        with open(card) as f:
            text = with_member_status(f.read(), metadata)
        with open(card + ".tmp", "w") as f:
            f.write(text)
        os.replace(card + ".tmp", card)
    return metadata


# metadata keys whose figures hold at one threshold only: (what they are, the command that writes them again)
THRESHOLD_BOUND_FIGURES = {
    "tumor_free_probe": ("tumor-free probe", "python -m trainer.tumor_free_probe --input DIR --model <artifact> --write"),
    "look_check": ("look check", "python -m trainer.look_check --input DIR --model <artifact> --write"),
    "targets": ("acceptance targets", "python -m trainer.targets <artifact> --write"),
    "stress": ("stress test", "python -m trainer.stress transplant <artifact> --write"),
    "stress_spots": ("bright-foci stress test", "python -m trainer.stress spots <artifact> --write")}


def contract_problems(metadata):
    """Sentences for every rule of metadata.json that does not hold (empty: the contract holds).

    The rules tie fields written by different tools (train, ood build, export) together, so an
    artifact edited out of order is refused when the job starts, not on every worker."""
    import math
    problems = []
    t = metadata.get("threshold")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0.0 < t < 1.0:
        problems.append(f"threshold {t!r} is not a probability strictly between 0 and 1")
    ood = metadata.get("ood") or {}
    if ood:
        ot = ood.get("threshold")
        if isinstance(ot, bool) or not isinstance(ot, (int, float)) or not math.isfinite(ot) or ot <= 0:
            problems.append(f"OOD threshold {ot!r} is not a positive number")
    for key, (what, command) in THRESHOLD_BOUND_FIGURES.items():
        figures = metadata.get(key)
        if figures and figures.get("threshold") != t:
            problems.append(f"the {what} figures were measured at threshold {figures.get('threshold')!r}, not at "
                            f"the artifact's {t!r}: run {command} again")
    member = metadata.get(MEMBER_KEY)
    problem = None if member is None else _member_problem(member)
    if problem:
        problems.append(problem)
    onnx = (metadata.get("engines") or {}).get("onnxruntime")
    if onnx:
        layers = [c for c in ood.get("components", []) if c != "input_histogram"]
        if ood and list(onnx.get("feature_outputs") or []) != layers:
            problems.append(f"the ONNX graph outputs the features {onnx.get('feature_outputs') or []} but the OOD "
                            f"reference needs {layers} (the reference was built after the export): run "
                            "python -m trainer.export again")
        if onnx.get("keras_sha256") not in (None, metadata.get("model_sha256")):
            problems.append("the ONNX graph was exported from another model.keras (sha256 "
                            f"{str(onnx['keras_sha256'])[:12]}...) than the one metadata.json names")
    return problems


def check_onnx_binding(version_dir, metadata):
    """Raise unless model.onnx is the file `trainer.export` wrote from this artifact's model.keras."""
    onnx = (metadata.get("engines") or {}).get("onnxruntime") or {}
    if not onnx.get("keras_sha256") or not onnx.get("sha256"):
        raise ArtifactError(f"{version_dir}: the ONNX export records no binding to model.keras (exported by an "
                            f"older version); run python -m trainer.export {version_dir}, or score with "
                            "--engine tensorflow")
    actual = sha256_file(os.path.join(version_dir, onnx["file"]))
    if actual != onnx["sha256"]:
        raise ArtifactError(f"{version_dir}/{onnx['file']} is not the graph trainer.export wrote from model.keras "
                            f"(sha256 {actual[:12]}... is not {onnx['sha256'][:12]}...); re-export it")


def verify(version_dir):
    """Metadata of a local artifact after checking SHA256SUMS and model.keras against its sha256."""
    check_sums(version_dir)
    metadata = read_metadata(version_dir)
    model_path = os.path.join(version_dir, metadata.get("model_file", MODEL_FILE))
    if not os.path.exists(model_path):
        raise ArtifactError(f"{version_dir}: {MODEL_FILE} is missing")
    actual = sha256_file(model_path)
    if actual != metadata["model_sha256"]:
        raise ArtifactError(f"{model_path}: sha256 {actual} does not match metadata "
                            f"{metadata['model_sha256']}; refusing to load")
    preprocessing.InputSpec.from_dict(metadata["input_spec"])
    problems = contract_problems(metadata)
    if problems:
        raise ArtifactError(f"{version_dir}/{METADATA_FILE}: " + "; ".join(problems))
    return metadata


def load(version_dir):
    """(model, metadata) from a local artifact, verified and loaded in safe mode."""
    import keras

    from screening_core import evidence, upright  # noqa: F401  (register the layers an ensemble artifact uses)
    metadata = verify(version_dir)
    model = keras.models.load_model(
        os.path.join(version_dir, metadata.get("model_file", MODEL_FILE)), safe_mode=True, compile=False)
    return model, metadata


def next_version(name_dir):
    """1 + the largest integer version under `name_dir` (1 when none)."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(name_dir):
        return 1
    versions = [int(v.rstrip("/")) for v in tf.io.gfile.listdir(name_dir) if v.rstrip("/").isdigit()]
    return max(versions, default=0) + 1


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="python -m screening_core.artifact", allow_abbrev=False,
                                     description="Check or (re)seal a model artifact's SHA256SUMS; mark it as an "
                                                 "ensemble's member (brain-score and brain-validate then refuse it "
                                                 "unless --allow-member-model).")
    parser.add_argument("command", choices=("verify", "seal", "member"))
    parser.add_argument("version_dir")
    parser.add_argument("--of", dest="ensembles", action="append", default=[],
                        help="member: an ensemble that scores this artifact (repeat for several)")
    parser.add_argument("--reason", default="", help="member: why it is not a screening model alone")
    args = parser.parse_args(argv)
    if args.command == "member":
        try:
            mark_member(args.version_dir, args.ensembles, args.reason)
        except ArtifactError as e:
            parser.error(str(e))
        print(f"{args.version_dir}: marked a member of {', '.join(args.ensembles)}")
        return 0
    if args.ensembles or args.reason:
        parser.error("--of and --reason belong to the member command")
    if args.command == "seal":
        read_metadata(args.version_dir)
        seal(args.version_dir)
        print(f"sealed {os.path.join(args.version_dir, SUMS_FILE)}")
        return 0
    try:
        md = verify(args.version_dir)
    except ArtifactError as e:
        print(f"error: {e}")
        return 2
    print(f"ok: {md['name']} version {md['version']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
