"""Regenerate the validation-page and worklist screenshots in docs/ from generated data.

  .venv/bin/python docs/make_screenshots.py        # needs chromium (make browser)

Generated slices only (tests/synth.py), never shared or patient images: 24 "patients" with a tumor
and 24 without, three slices each, in class folders with the patient in the file name; then
brain-validate with that pattern, and brain-score over the same folders with --group-pattern for
the worklist. The screenshots show the page layout, not a model's quality on real MRI.
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_pipeline import run, validate  # noqa: E402
from tests import synth  # noqa: E402

DOCS = os.path.dirname(os.path.abspath(__file__))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600"]


def _sample(root):
    for label, lesion in (("tumor", True), ("notumor", False)):
        os.makedirs(os.path.join(root, label), exist_ok=True)
        for patient in range(24):
            for z in range(3):
                seed = patient * 10 + z + (0 if lesion else 5000)
                with open(os.path.join(root, label, f"PT{patient:03d}{label[0]}_{z}.png"), "wb") as f:
                    f.write(synth.encode(synth.brain_slice(seed, 128, lesion=lesion)))


def _shot(chromium, html_path, png_path, profile):
    subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png_path}",
                    "file://" + os.path.abspath(html_path)], capture_output=True, timeout=120, check=True)


def main():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not installed: make browser", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="screenshots-")
    sample = os.path.join(work, "sample")
    _sample(sample)
    key = os.path.join(work, "key")
    pattern = r"^(PT\d+\w)_"
    validate.main(["--sample", sample, "--output", os.path.join(work, "validation"), "--group-pattern", pattern,
                   "--pseudonym-key-file", key, "--bootstrap", "200"])
    run.main(["--input", sample, "--output", os.path.join(work, "night"), "--group-pattern", pattern,
              "--pseudonym-key-file", key])
    _shot(chromium, os.path.join(work, "validation", "validation.html"),
          os.path.join(DOCS, "validation_screenshot.png"), os.path.join(work, "p1"))
    _shot(chromium, os.path.join(work, "night", "results", "report.html"),
          os.path.join(DOCS, "worklist_screenshot.png"), os.path.join(work, "p2"))
    print(f"written: {DOCS}/validation_screenshot.png, {DOCS}/worklist_screenshot.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
