"""A site profile: the operating threshold a hospital chose on its own labelled data.

`brain-validate` writes it; `brain-score --site-profile` applies it. It is
bound to one model by sha256: a threshold validated for one set of weights
says nothing about another, so a profile for a different model is refused.
"""
import datetime
import hashlib
import json

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline import errors

FORMAT = "brain-screening-site-profile/1"
REQUIRED = ("format", "model_name", "model_version", "model_sha256", "threshold", "target_sensitivity",
            "n_images", "n_positive", "created_at", "meets")


class ProfileError(errors.ScreeningError, ValueError):
    pass


def build(metadata, threshold, target_sensitivity, validation):
    """The profile dict; `validation` holds the figures measured at `threshold`."""
    return {"format": FORMAT, "model_name": metadata["name"], "model_version": str(metadata["version"]),
            "model_sha256": metadata["model_sha256"], "threshold": float(threshold),
            "target_sensitivity": float(target_sensitivity),
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **validation}


def _seal_of(profile):
    body = {k: v for k, v in profile.items() if k != "seal_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write(profile, path):
    """Write `profile` sealed: a hand-edited threshold or verdict no longer matches its seal."""
    with open(path, "w") as f:
        json.dump({**profile, "seal_sha256": _seal_of(profile)}, f, indent=2)


def load(path, force=False):
    """(profile, id): id is the first 12 hex digits of the file's sha256, recorded in every row."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            raw = f.read()
        profile = json.loads(raw.decode())
    except Exception as e:
        raise ProfileError(f"site profile {path} is unreadable: {type(e).__name__}: {e}") from e
    missing = [k for k in REQUIRED if not isinstance(profile, dict) or k not in profile]
    if missing:
        raise ProfileError(f"site profile {path} lacks {missing}; write it with brain-validate")
    if profile["format"] != FORMAT:
        raise ProfileError(f"site profile {path} has format {profile['format']!r}, expected {FORMAT!r}")
    t = profile["threshold"]
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 < t < 1.0:
        raise ProfileError(f"site profile {path}: threshold {t!r} is not strictly between 0 and 1")
    if profile.get("seal_sha256") != _seal_of(profile):
        raise ProfileError(f"site profile {path} was edited after brain-validate wrote it (or has no seal): "
                           "validate again instead of editing it")
    if not profile.get("meets") or profile.get("forced"):
        if not force:
            raise ProfileError(f"site profile {path} records a validation that did not meet its checks "
                               f"({profile.get('status', 'not met')}): do not rely on the model here yet; "
                               "--force-site-profile applies it anyway (recorded in every row)")
    return profile, hashlib.sha256(raw).hexdigest()[:12]


def check_model(profile, metadata, path):
    if profile["model_sha256"] != metadata["model_sha256"]:
        raise ProfileError(
            f"site profile {path} was validated for {profile['model_name']} v{profile['model_version']} "
            f"(sha256 {profile['model_sha256'][:12]}...), not for this model, {metadata['name']} "
            f"v{metadata['version']} (sha256 {metadata['model_sha256'][:12]}...); validate this model "
            "with brain-validate first")
