"""Store in a model artifact the fingerprints of every image it was developed on.

Why: a site that validates the model on images it was trained, tuned or chosen on measures its memory.
brain-validate compares the site's sample with these fingerprints (screening_core/fingerprint.py: 512 bits
per image, not a picture of it) and refuses "meets" when the sample holds near-copies of them.

  python -m trainer.development_set --model models/brain-tumor-cnn/17 \\
      --data-dir ../shared/data/brain-mri --data-dir ../shared/data/lgg --data-dir ../shared/data/brats-ped \\
      --data-dir ../shared/data/brats-sample --data-dir ../data/healthy-heads

Give every collection the model's training, validation, threshold choice or model choice read, whole:
a split's other side was still seen in development. Every .jpg/.jpeg/.png/.bmp/.tif under each folder is
fingerprinted, except masks (folders named masks, non-tumor-lesions). The collection names (the folders'
names) and counts go into metadata.json; development_fingerprints.npz is sealed with the artifact.
"""
import argparse
import os
import sys

import numpy as np

from screening_core import artifact, fingerprint, preprocessing
from trainer import HelpFormatter

FILE = fingerprint.DEVELOPMENT_FILE
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
NOT_IMAGES = {"masks", "non-tumor-lesions", "lesions-flair"}


def images(folder):
    """Sorted image files under `folder`, mask folders left out."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in NOT_IMAGES)
        out.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES))
    return out


def fingerprints(paths):
    thumbs = []
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            thumbs.append(fingerprint.thumbnail(preprocessing.decode_raster(f.read())))
        if (i + 1) % 2000 == 0:
            print(f"  {i + 1} of {len(paths)}", file=sys.stderr, flush=True)
    thumbs = np.stack(thumbs) if thumbs else np.zeros((0, fingerprint.THUMB_SIZE ** 2), np.float32)
    thumbs = thumbs[fingerprint.informative(thumbs)]  # blank images: nothing to recognise
    return fingerprint.of_thumbnails(thumbs)


def write(version_dir, collections):
    """collections: {name: uint8[n, BITS/8]} -> the artifact's npz and metadata entry (re-sealed)."""
    names = sorted(collections)
    fps = np.concatenate([collections[n] for n in names])
    index = np.concatenate([np.full(len(collections[n]), i, np.int16) for i, n in enumerate(names)])
    tmp = os.path.join(version_dir, FILE + ".tmp.npz")
    np.savez_compressed(tmp, fingerprints=fps, collection=index, collections=np.array(names))
    os.replace(tmp, os.path.join(version_dir, FILE))

    def change(md):
        md["development_fingerprints"] = {"file": FILE, "count": int(len(fps)),
                                          "collections": {n: int(len(collections[n])) for n in names},
                                          **fingerprint.scheme()}
    return artifact.update_metadata(version_dir, change)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trainer.development_set", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 2)[2], formatter_class=HelpFormatter, allow_abbrev=False)
    p.add_argument("--model", required=True, help="model artifact folder to write into")
    p.add_argument("--data-dir", action="append", required=True, help="a development collection (repeat)")
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(args.model, artifact.METADATA_FILE)):
        p.error(f"--model {args.model}: not a model artifact (no metadata.json)")
    collections = {}
    for d in args.data_dir:
        name = os.path.basename(os.path.normpath(d))
        if not os.path.isdir(d):
            p.error(f"--data-dir {d}: not a folder")
        if name in collections:
            p.error(f"--data-dir {d}: a second collection named {name}")
        paths = images(d)
        if not paths:
            p.error(f"--data-dir {d}: no images")
        print(f"{name}: {len(paths)} images", file=sys.stderr, flush=True)
        collections[name] = fingerprints(paths)
    md = write(args.model, collections)
    entry = md["development_fingerprints"]
    print(f"{args.model}/{FILE}: {entry['count']} fingerprints ({', '.join(f'{k} {v}' for k, v in entry['collections'].items())}); "
          "metadata.json updated and the artifact re-sealed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
