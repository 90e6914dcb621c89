"""Training input pipeline: steps/s from image files (tf.data) vs the same
batches already in memory, same model, same strategy.

  .venv/bin/python bench/training_input.py [--images 2000] [--epochs 2]

The file pipeline is measured on epochs after the first (the cache is warm,
as in real training from epoch 2 on) and on the first epoch (cold: decode +
preprocess of every file). Ratio = file steps/s / in-memory steps/s.
"""
import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    import keras
    import tensorflow as tf

    from screening_core import preprocessing
    from trainer import input_pipeline
    from trainer.model import make_model

    files = sorted(glob.glob(os.path.join(common.SHARED, "*", "*.jpg")))
    source = "shared brain-mri JPEGs"
    if not files:
        work = tempfile.mkdtemp()
        blobs, source = common.image_bytes(args.images)
        files = []
        for i, b in enumerate(blobs):
            files.append(os.path.join(work, f"{i}.jpg"))
            open(files[-1], "wb").write(b)
    rng = np.random.default_rng(0)
    files = [files[i] for i in rng.choice(len(files), min(args.images, len(files)), replace=False)]
    labels = np.array(["notumor" not in f for f in files], np.float32)
    spec = preprocessing.InputSpec(height=args.image_size, width=args.image_size)
    steps = int(np.ceil(len(files) / args.batch_size))

    def fit_time(ds, epochs):
        keras.utils.set_random_seed(0)
        model = make_model((spec.height, spec.width, 1))
        model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
        times = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t)
        model.fit(ds, epochs=epochs, verbose=0, callbacks=[Timer()])
        return times

    file_ds = input_pipeline.make_dataset(files, labels, spec, args.batch_size, training=True, seed=0)
    file_times = fit_time(file_ds, args.epochs + 1)
    # The same augmented batches, produced once and held in memory: the model alone.
    batches = list(file_ds.as_numpy_iterator())
    xs = tf.constant(np.concatenate([b[0] for b in batches]))
    ys = tf.constant(np.concatenate([b[1] for b in batches]))
    mem_ds = tf.data.Dataset.from_tensor_slices((xs, ys)).batch(args.batch_size).cache().prefetch(tf.data.AUTOTUNE)
    mem_times = fit_time(mem_ds, args.epochs + 1)
    mem_warm = float(np.mean(mem_times[1:]))
    rows = [
        {"input": "files, first epoch (decode+preprocess, cache fill)", "epoch_s": file_times[0],
         "steps_per_s": steps / file_times[0], "images_per_s": len(files) / file_times[0],
         "ratio_to_in_memory": mem_warm / file_times[0]},
        {"input": "files, later epochs (cached)", "epoch_s": float(np.mean(file_times[1:])),
         "steps_per_s": steps / np.mean(file_times[1:]), "images_per_s": len(files) / np.mean(file_times[1:]),
         "ratio_to_in_memory": mem_warm / float(np.mean(file_times[1:]))},
        {"input": "in-memory batches (augmented once, same model)", "epoch_s": mem_warm,
         "steps_per_s": steps / mem_warm, "images_per_s": len(files) / mem_warm, "ratio_to_in_memory": 1.0},
    ]
    common.report("training_input", rows, {"source": source, "images": len(files),
                                           "batch_size": args.batch_size, "image_size": args.image_size})


if __name__ == "__main__":
    main()
