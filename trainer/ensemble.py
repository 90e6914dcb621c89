"""Model v9: the lesion-first model's map and a slice classifier, combined as independent evidence.

  python -m trainer.ensemble --lesion models/brain-tumor-cnn/8 --classifier models/brain-tumor-cnn/3 \
      --out models/brain-tumor-cnn/_work/9

writes <out>/best.keras and <out>/fit.json; `python -m trainer.lesion_train ... --from-checkpoint
<out>/best.keras --version 9` then evaluates it on the lesion model's data (threshold, per-source
metrics, lesion-map figures, level bins) and writes the artifact (`make train-v9` does both).

The graph: both members rebuilt flat on the shared input: the lesion model under its own names (its
`lesion_map`, `enc*_pool` and `last_conv` are what the scorer, the OOD guard and the review overlays look
up), the classifier under `cls_`-prefixed names (its own would clash; its `cls_block*_pool` outputs join
the OOD guard's features, so an image unlike either member's training images stands out), and
`screening_core.evidence.OddsProduct` on their two probabilities. Both members must take the same
input (size and `prepare()` id): one preprocessing, one pass over the pixels.
"""
import argparse
import json
import os

from trainer import HelpFormatter

CLASSIFIER_PREFIX = "cls_"


def _filters(lesion):
    """The U-Net's channel widths, read from its layers (artifacts do not all record them)."""
    names = {layer.name: layer for layer in lesion.layers}
    widths, i = [], 1
    while f"enc{i}a_conv" in names:
        widths.append(int(names[f"enc{i}a_conv"].kernel.shape[-1]))
        i += 1
    return tuple(widths + [int(names["bottleneck_conv"].kernel.shape[-1])])


def build(lesion_dir, classifier_dir):
    """(ensemble model, description) from two artifact folders."""
    import keras

    from screening_core import artifact, evidence
    from trainer import unet
    lesion, lesion_md = artifact.load(lesion_dir)
    classifier, classifier_md = artifact.load(classifier_dir)
    if lesion_md.get("head") != "lesion_map":
        raise SystemExit(f"{lesion_dir} is not a lesion-map model (head {lesion_md.get('head')!r})")
    if lesion_md["input_spec"] != classifier_md["input_spec"]:
        raise SystemExit(f"the members take different inputs: {lesion_md['input_spec']} vs "
                         f"{classifier_md['input_spec']}; an ensemble needs one preprocessing")
    spec = lesion_md["input_spec"]
    inputs = keras.Input(shape=(spec["height"], spec["width"], spec["channels"]), name="image")
    flat = unet.make_unet(filters=_filters(lesion), head_masked=any(lay.name == "head_mask" for lay in lesion.layers),
                          inputs=inputs)
    for layer in lesion.layers:
        if layer.weights:
            flat.get_layer(layer.name).set_weights(layer.get_weights())

    def prefixed(layer):
        config = layer.get_config()
        config["name"] = CLASSIFIER_PREFIX + layer.name
        return layer.__class__.from_config(config)

    flat_classifier = keras.models.clone_model(classifier, input_tensors=inputs, clone_function=prefixed)
    flat_classifier.set_weights(classifier.get_weights())
    p_classifier = flat_classifier.output
    combined = evidence.OddsProduct(name="combined_probability", dtype="float32")([p_classifier, flat.output])
    model = keras.Model(inputs, combined, name="brain_tumor_lesion_and_classifier")
    members = {"lesion_map": {"artifact": lesion_dir, "model_sha256": lesion_md["model_sha256"]},
               "classifier": {"artifact": classifier_dir, "model_sha256": classifier_md["model_sha256"]}}
    fit_seconds = sum(float(md.get("training", {}).get("fit_seconds") or 0) for md in (lesion_md, classifier_md))
    return model, {"members": members, "fit_seconds": fit_seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.ensemble", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--lesion", required=True, help="artifact folder of the lesion-map model")
    parser.add_argument("--classifier", required=True, help="artifact folder of the slice classifier")
    parser.add_argument("--out", required=True, help="folder for best.keras and fit.json")
    args = parser.parse_args(argv)
    model, info = build(args.lesion, args.classifier)
    os.makedirs(args.out, exist_ok=True)
    model.save(os.path.join(args.out, "best.keras"))
    with open(os.path.join(args.out, "fit.json"), "w") as f:
        # what lesion_train --from-checkpoint reads; nothing was fitted here (the members' fits are summed)
        json.dump({"fit_seconds": info["fit_seconds"], "best_epoch_mean_val_auc": 0.0,
                   "members": info["members"]}, f, indent=1)
    print(f"Ensemble of {args.lesion} (lesion map) and {args.classifier} (classifier) written to "
          f"{args.out}/best.keras")


if __name__ == "__main__":
    main()
