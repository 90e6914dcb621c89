"""Shared helpers for the benchmarks: inputs, machine facts, table + JSON output."""
import glob
import json
import os
import platform
import tarfile
import zipfile

import numpy as np

from beam_pipeline import model_store, sample_data  # scripts put the repository on sys.path first

# Peak RSS of the process evaluating it, in MiB: /proc/self/status VmHWM belongs to the process's own
# address space. Not getrusage's ru_maxrss: Linux carries the parent's high-water mark into a child across
# fork/vfork + exec, so a 500 MiB benchmark parent made every child report >= 500 MiB.
PEAK_RSS_MIB = ("int(next(line.split()[1] for line in open('/proc/self/status') "
                "if line.startswith('VmHWM:'))) / 1024")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = model_store.DEFAULT_MODEL
SHARED = os.path.join(REPO, "..", "shared", "data", "brain-mri")


def image_bytes(n, seed=0, tumor_share=None):
    """n JPEG byte strings: real MRI from ../shared when present, else generated.

    `tumor_share`: the fraction drawn from the tumor classes (the rest from notumor);
    default: the collection's own mix (72 % tumors)."""
    files = sorted(glob.glob(os.path.join(SHARED, "*", "*.jpg")))
    rng = np.random.default_rng(seed)
    if files:
        if tumor_share is None:
            picks = [files[i] for i in rng.choice(len(files), n, replace=n > len(files))]
        else:
            tumor = [f for f in files if os.path.basename(os.path.dirname(f)) != "notumor"]
            normal = [f for f in files if os.path.basename(os.path.dirname(f)) == "notumor"]
            k = round(n * tumor_share)
            picks = [tumor[i] for i in rng.choice(len(tumor), k, replace=k > len(tumor))] + \
                    [normal[i] for i in rng.choice(len(normal), n - k, replace=n - k > len(normal))]
            picks = [picks[i] for i in rng.permutation(n)]
        return [open(p, "rb").read() for p in picks], "shared brain-mri JPEGs"
    share = 1 / 3 if tumor_share is None else tumor_share
    return [sample_data.encode(sample_data.synthetic_slice(i, 224, lesion=rng.random() < share), "JPEG")
            for i in range(n)], "generated JPEGs"


def write_zip(path, blobs, prefix="img"):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i, b in enumerate(blobs):
            zf.writestr(f"{prefix}/{i:07d}.jpg", b)


def write_tgz(path, blobs, prefix="img"):
    with tarfile.open(path, "w:gz") as tar:
        for i, b in enumerate(blobs):
            sample_data.tar_add(tar, f"{prefix}/{i:07d}.jpg", b)


def machine():
    model = ""
    mhz = None
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("cpu MHz") and mhz is None:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return {"cpu": model, "cores": os.cpu_count(), "mhz": mhz, "memory_gib": round(mem, 1),
            "python": platform.python_version()}


RESULTS = os.path.join(REPO, "bench", "results")


def report(name, rows, extra, out_dir=RESULTS):
    """Print rows (list of dicts) as a table and write <out_dir>/<name>.json."""
    cols = list(rows[0])
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(_fmt(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
    for k, v in extra.items():
        print(f"{k}: {v}")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"rows": rows, **extra, "machine": machine()}, f, indent=2)
    print(f"wrote {path}")


def _fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)
