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
input size: one pass over the pixels, prepared by the one `prepare()` version the ensemble's evaluation names
(members made on older versions are scored on it, as v37 scores v1-trained members on v3).

An overlay map (`--overlay`, v31): a map trained only to outline the lesion where its mask shows it takes the
unprefixed names in the first map's place (which then joins as `les1_`), so the overlays, the lesion areas and the
OOD guard read it; it weighs 0 in the score, which stays the scoring members' (v32 against v30: the same
flags on all 8,109 evaluation slices, probabilities within float32 rounding, at most 1.2e-5).

A second lesion map (`--lesion` twice; run FS of docs/model_v4_notes.md: two maps of different lineage
disagree where each is wrong) joins under `les2_`-prefixed names; the maps' log-odds are averaged (each weighs
1/n against the classifier's 1), and the overlays show the first map, under the names scorers look up.
"""
import argparse
import json
import os

from trainer import HelpFormatter

CLASSIFIER_PREFIX = "cls_"
EXTRA_LESION_PREFIX = "les{}_"  # the second lesion member's layers: les2_... (les1_: the first, beside an overlay map)
EXTRA_CLASSIFIER_PREFIX = "cls{}_"  # the second classifier's layers: cls2_...
MIRROR_PREFIX = "mirror_"  # the second pass of a mirrored member (ood.layer_names leaves it out)
MIRROR_CHOICES = ("none", "lesion", "classifier", "both")


def member_artifacts(members, kind):
    """The artifact folders of an ensemble's `kind` members ("classifier" or "lesion_map"), first to last, from
    training.members as `build` writes it (the first under its kind's name, then <kind>_2, <kind>_3, ...)."""
    keys = sorted((k for k in members if k == kind or k.startswith(kind + "_")), key=lambda k: (len(k), k))
    return [members[k]["artifact"] for k in keys]


def trained_on_validation(members, validation_paths):
    """{member artifact: share of `validation_paths` (the ensemble's validation slices) it was trained on}, for
    the members whose share is above 0. A slice an artifact was not trained on is in its
    validation_predictions.csv (validation, held-out site or external); the rest were its training data. Why:
    v24 and v26 (draws with their own seeds, which seeded the split) had trained on most of v30's validation
    slices, unseen (docs/model_v4_notes.md row SPL). A member without that file is left out (nothing to compare)."""
    from trainer.artifact_data import split_rows
    reference = set(validation_paths)
    out = {}
    for member in members.values():
        try:
            theirs = {r["path"] for r in split_rows(member["artifact"])}
        except FileNotFoundError:
            continue
        seen = reference - theirs
        if seen:
            out[member["artifact"]] = round(len(seen) / len(reference), 4)
    return out


def _filters(lesion):
    """The U-Net's channel widths, read from its layers (artifacts do not all record them)."""
    names = {layer.name: layer for layer in lesion.layers}
    widths, i = [], 1
    while f"enc{i}a_conv" in names:
        widths.append(int(names[f"enc{i}a_conv"].kernel.shape[-1]))
        i += 1
    return tuple(widths + [int(names["bottleneck_conv"].kernel.shape[-1])])


def interpolate(base, fine_tuned, alpha):
    """`base` with its weights moved `alpha` of the way to `fine_tuned`'s (same architecture), in place.

    Why: a fine-tune that learns what the base never saw (BraTS-PEDs' T2 and T1 tumors for v3) moves
    the collections it adds and loses some of the base's specificity where the base was trained;
    the weights part-way between the two, not their outputs, often keep the base's in-distribution
    accuracy and most of the fine-tune's gains (WiSE-FT: Wortsman et al., "Robust fine-tuning of
    zero-shot models", CVPR 2022). Both must come from one initialisation (the fine-tune started
    from the base's weights), or the average of their weights is no model at all. Batch
    normalisation's moving statistics are interpolated with the rest.
    """
    if not 0.0 <= alpha <= 1.0:
        raise SystemExit(f"--alpha is a share in [0, 1], got {alpha}")
    a, b = base.get_weights(), fine_tuned.get_weights()
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise SystemExit("the fine-tuned classifier is not the base classifier's architecture")
    base.set_weights([(1.0 - alpha) * x + alpha * y for x, y in zip(a, b, strict=True)])
    return base


def _prefixed(prefix):
    def clone(layer):
        config = layer.get_config()
        config["name"] = prefix + layer.name
        return layer.__class__.from_config(config)
    return clone


def _second_pass(member, inputs, mirrored, name):
    """`member` (a model on `inputs`) applied to `mirrored` too: a copy of its layers under MIRROR_PREFIX
    with the same weights, nested as one layer `name` (so the scorer's and the OOD guard's lookups by
    name still find the first pass's layers); its slice probability."""
    import keras
    sub = keras.Model(inputs, member.output)
    fresh = keras.Input(shape=tuple(inputs.shape[1:]), name=name + "_image")
    twin = keras.models.clone_model(sub, input_tensors=fresh, clone_function=_prefixed(MIRROR_PREFIX))
    twin = keras.Model(twin.inputs, twin.outputs[0], name=name)  # one tensor, not a list of one
    twin.set_weights(sub.get_weights())
    return twin(mirrored)


_SHAPE_KEYS = ("height", "width", "channels", "dtype")


def _same_input_size(spec, other):
    """Whether two input specs (metadata dicts) take tensors of one shape and dtype, whatever their `prepare()` id."""
    return all(spec[k] == other[k] for k in _SHAPE_KEYS)


def _check_member(path, md, spec, lesion=True):
    """Refuse a member that is not of its kind (a lesion-map model, or with `lesion=False` a slice classifier)
    or takes another input shape than `spec`.

    Members made on other `prepare()` versions may join: the ensemble is scored on the one version its
    evaluation names (`lesion_train --preprocessing`; v37 scores members trained on v1 with v3), which the
    artifact records as the ensemble's input. A member trained on the newest version can then replace one
    trained on an older one (docs/model_v4_notes.md row BOX2)."""
    if lesion and md.get("head") != "lesion_map":
        raise SystemExit(f"{path} is not a lesion-map model (head {md.get('head')!r})")
    if not lesion and md.get("head") == "lesion_map":
        raise SystemExit(f"{path} is a lesion-map model, not a slice classifier")
    if not _same_input_size(md["input_spec"], spec):
        raise SystemExit(f"the members take different inputs: {md['input_spec']} vs {spec}; an ensemble needs "
                         "one input size")
    if md["input_spec"]["preprocessing"] != spec["preprocessing"]:
        print(f"note: {path} was trained on {md['input_spec']['preprocessing']}, another member on "
              f"{spec['preprocessing']}: the ensemble is scored on the preprocessing its evaluation names")


def _flat_unet(lesion, inputs):
    """The lesion-map model `lesion` rebuilt on `inputs` under its own layer names (those the scorer, the OOD
    guard and the overlays look up), with its weights."""
    from trainer import unet
    flat = unet.make_unet(filters=_filters(lesion), head_masked=any(lay.name == "head_mask" for lay in lesion.layers),
                          inputs=inputs)
    for layer in lesion.layers:
        if layer.weights:
            flat.get_layer(layer.name).set_weights(layer.get_weights())
    return flat


def _clone_under(model, prefix, inputs):
    """`model` rebuilt on `inputs` with its layers under `prefix`, with its weights."""
    import keras
    flat = keras.models.clone_model(model, input_tensors=inputs, clone_function=_prefixed(prefix))
    flat.set_weights(model.get_weights())
    return flat


def _extra_member(path, prefix, spec, inputs, lesion=True):
    """The member at `path` (a lesion map, or with `lesion=False` a classifier), rebuilt on `inputs` with
    its layers under `prefix` (the rebuilt model and its metadata)."""
    from screening_core import artifact
    model, md = artifact.load(path)
    _check_member(path, md, spec, lesion)
    return _clone_under(model, prefix, inputs), md


def _orientation_model(path, spec):
    """(the orientation network at `path`, its metadata), refused unless it tells turns of `spec`'s input."""
    from screening_core import artifact
    model, md = artifact.load(path)
    if md.get("head") != "orientation":
        raise SystemExit(f"{path} is not an orientation model (head {md.get('head')!r}; trainer.orientation writes one)")
    if not _same_input_size(md["input_spec"], spec):
        raise SystemExit(f"the orientation model takes {md['input_spec']}, the members {spec}: one input size")
    if spec["height"] != spec["width"]:
        raise SystemExit("a quarter turn needs a square input")
    return model, md


def upright_first(model, orientation, confidence, layer_name="lesion_map", half_turn_confidence=None):
    """`model` (an ensemble on one `image` input) rebuilt behind `orientation`: the image turned back to upright
    where the orientation network is sure of a quarter turn (`screening_core.upright.Upright`), every member as
    it was on the upright image, and the layer `layer_name` (the map the scorer, the overlays and the lesion
    areas read) turned back onto the image as given (`AsGiven`, under that name; the member's own map layer
    becomes `upright_<name>`). Every layer keeps its name and weights; the orientation network's are its own
    (`orient_`...). Why a rebuild, not a nested model: the scorer and the OOD guard look layers up by name in
    one flat graph. Keras's `clone_model` cannot rebuild on a tensor that is not an Input, so the graph is
    replayed node by node (`Function._run_through_graph`, which clone_model itself uses)."""
    import keras

    from screening_core import upright
    image = keras.Input(shape=tuple(model.inputs[0].shape[1:]), name="image")
    turns = _clone_under(orientation, "", image).output
    straight = upright.Upright(confidence, half_turn_confidence, name=upright.UPRIGHT_LAYER)([image, turns])
    clones = {}

    def clone(layer):
        if isinstance(layer, keras.Model):
            raise SystemExit(f"{layer.name}: a nested model (a mirrored pass) cannot be put behind --orientation")
        if id(layer) not in clones:
            config = layer.get_config()
            if layer.name == layer_name:
                config["name"] = "upright_" + layer.name
            clones[id(layer)] = (layer, layer.__class__.from_config(config))
        new = clones[id(layer)][1]
        if layer.name != layer_name:
            return new
        as_given = upright.AsGiven(confidence, half_turn_confidence, name=layer_name)
        return lambda *args, **kwargs: as_given([new(*args, **kwargs), turns])

    out = model._run_through_graph(straight, operation_fn=clone)
    rebuilt = keras.Model(image, out, name=model.name)
    for original, new in clones.values():
        new.set_weights(original.get_weights())
    return rebuilt


def build(lesion_dir, classifier_dir, fine_tuned_dir=None, alpha=0.0, mirror="none", more_lesions=(),
          more_classifiers=(), classifier_floor=None, overlay=None, orientation=None, half_turn_confidence=None):
    """(ensemble model, description) from two artifact folders; with `fine_tuned_dir`, the classifier's
    weights are moved `alpha` of the way to that fine-tune's (`interpolate`). `mirror` (MIRROR_CHOICES):
    which members also score the image mirrored left to right, their two log-odds averaged
    (`evidence.MirrorImage`; "lesion" mirrors every lesion map); the lesion map the overlays show stays the
    map of the image as given. `more_lesions`: further lesion-map artifacts whose log-odds are averaged with
    the first map's; `more_classifiers`: further classifiers (used as they are) whose log-odds are averaged
    with the first classifier's. `classifier_floor`: the lowest log-odds each classifier pass may give
    (`evidence.OddsProduct` floors; None: unbounded), so no classifier can veto what the maps find beyond it.
    `overlay`: a lesion-map artifact whose map the overlays show instead of the first map's, at weight 0 in the
    score (`evidence.OddsProduct` adds 0 x its log-odds: the scoring members' sum, unchanged). `orientation`: an
    orientation artifact (`trainer.orientation`) the image passes first, so a slice turned by a quarter reaches
    every member upright (`upright_first`)."""
    if mirror not in MIRROR_CHOICES:  # before any artifact is loaded
        raise SystemExit(f"--mirror is one of {', '.join(MIRROR_CHOICES)}, got {mirror!r}")
    if classifier_floor is not None and not -16.0 < classifier_floor < 0.0:
        raise SystemExit(f"--classifier-floor is log-odds between -16 and 0 (0: even odds), got {classifier_floor:g}")
    import keras

    from screening_core import artifact, evidence
    lesion, lesion_md = artifact.load(lesion_dir)
    classifier, classifier_md = artifact.load(classifier_dir)
    tuned_md = None
    if fine_tuned_dir:
        tuned, tuned_md = artifact.load(fine_tuned_dir)
        if not _same_input_size(tuned_md["input_spec"], classifier_md["input_spec"]):
            raise SystemExit("the fine-tuned classifier takes another input than the base classifier")
        interpolate(classifier, tuned, alpha)
    _check_member(lesion_dir, lesion_md, classifier_md["input_spec"])
    spec = lesion_md["input_spec"]
    inputs = keras.Input(shape=(spec["height"], spec["width"], spec["channels"]), name="image")
    overlay_md = None
    if overlay:
        overlay_model, overlay_md = artifact.load(overlay)
        _check_member(overlay, overlay_md, spec)
        shown = _flat_unet(overlay_model, inputs)
        flat = _clone_under(lesion, EXTRA_LESION_PREFIX.format(1), inputs)  # loaded and checked above
    else:
        flat = _flat_unet(lesion, inputs)

    flat_classifier = _clone_under(classifier, CLASSIFIER_PREFIX, inputs)
    classifiers, lesions, extra_md, extra_cls_md = [(flat_classifier, "classifier", "")], [(flat, "lesion", "")], [], []
    for k, path in enumerate(more_classifiers, start=2):
        member, md = _extra_member(path, EXTRA_CLASSIFIER_PREFIX.format(k), classifier_md["input_spec"], inputs,
                                   lesion=False)
        classifiers.append((member, "classifier", str(k)))
        extra_cls_md.append((path, md))
    for k, path in enumerate(more_lesions, start=2):
        member, md = _extra_member(path, EXTRA_LESION_PREFIX.format(k), spec, inputs)
        lesions.append((member, "lesion", str(k)))
        extra_md.append((path, md))
    passes = classifiers + lesions
    probabilities = [member.output for member, _, _ in passes]
    # the classifiers' log-odds averaged, the maps' log-odds averaged: each kind counts as much as the other
    weights = [1.0 / len(classifiers)] * len(classifiers) + [1.0 / len(lesions)] * len(lesions)
    floors = [classifier_floor] * len(classifiers) + [None] * len(lesions)
    if mirror != "none":
        mirrored = evidence.MirrorImage(name="mirror_image")(inputs)
        for i, (member, which, k) in enumerate(passes):
            if mirror in (which, "both"):
                probabilities.append(_second_pass(member, inputs, mirrored, f"{MIRROR_PREFIX}{which}{k}"))
                weights[i] /= 2
                weights.append(weights[i])
                floors.append(floors[i])
    if overlay_md is not None:  # last, at weight 0: in the graph (the scorer finds its map), not in the score
        probabilities.append(shown.output)
        weights.append(0.0)
        floors.append(None)
    # one classifier and one map, unmirrored: the plain sum (weights all 1), saved as v9-v15 were
    combined = evidence.OddsProduct(weights=weights if len(probabilities) > 2 else None,
                                    floors=floors if classifier_floor is not None else None,
                                    name="combined_probability", dtype="float32")(probabilities)
    model = keras.Model(inputs, combined, name="brain_tumor_lesion_and_classifier")
    orientation_md = None
    if orientation:
        if mirror != "none":
            raise SystemExit("--orientation and --mirror: one or the other")
        turner, orientation_md = _orientation_model(orientation, spec)
        confidence = float(orientation_md["threshold"])
        if half_turn_confidence is not None and not confidence <= half_turn_confidence < 1:
            raise SystemExit(f"--half-turn-confidence {half_turn_confidence:g}: below 1 and at least the orientation "
                             f"network's own confidence ({confidence:g})")
        model = upright_first(model, turner, confidence, half_turn_confidence=half_turn_confidence)
    members = {"lesion_map": {"artifact": lesion_dir, "model_sha256": lesion_md["model_sha256"]},
               "classifier": {"artifact": classifier_dir, "model_sha256": classifier_md["model_sha256"]}}
    for name, which in (("classifier", "classifier"), ("lesion_map", "lesion")):
        members[name]["mirrored"] = mirror in (which, "both")
    for k, (path, md) in enumerate(extra_md, start=2):
        members[f"lesion_map_{k}"] = {"artifact": path, "model_sha256": md["model_sha256"],
                                      "mirrored": mirror in ("lesion", "both"),
                                      "layer_prefix": EXTRA_LESION_PREFIX.format(k)}
    for k, (path, md) in enumerate(extra_cls_md, start=2):
        members[f"classifier_{k}"] = {"artifact": path, "model_sha256": md["model_sha256"],
                                      "mirrored": mirror in ("classifier", "both"),
                                      "layer_prefix": EXTRA_CLASSIFIER_PREFIX.format(k)}
    for name, md in (("classifier", classifier_md),
                     *((f"classifier_{k}", md) for k, (_, md) in enumerate(extra_cls_md, start=2))):
        members[name].update(_transplanted(md))
    if classifier_floor is not None:
        members["classifier"]["log_odds_floor"] = classifier_floor
    if overlay_md is not None:
        members["lesion_map"]["layer_prefix"] = EXTRA_LESION_PREFIX.format(1)
        members["overlay_map"] = {"artifact": overlay, "model_sha256": overlay_md["model_sha256"], "weight": 0.0}
    if orientation_md is not None:
        members["orientation"] = {"artifact": orientation, "model_sha256": orientation_md["model_sha256"],
                                  "confidence": confidence, "half_turn_confidence": half_turn_confidence}
    if tuned_md is not None:
        members["classifier"]["moved_towards"] = {"artifact": fine_tuned_dir, "alpha": alpha,
                                                  "model_sha256": tuned_md["model_sha256"]}
    fit_seconds = sum(float(md.get("training", {}).get("fit_seconds") or 0)
                      for md in (lesion_md, classifier_md, tuned_md or {}, overlay_md or {},
                                 *(m for _, m in extra_md + extra_cls_md)))
    fit_seconds += float((orientation_md or {}).get("orientation", {}).get("fit_seconds") or 0)
    return model, {"members": members, "fit_seconds": fit_seconds}


def _transplanted(md):
    """A member's `--transplant-tumors` recipe, for the card's T2 coverage: real FLAIR/T2 tumors set into its
    tumor-free T2 and brain-mri slices are T2 tumors it saw that no collection images."""
    cfg = md.get("training_config") or {}
    if not float(cfg.get("transplant_tumors") or 0):
        return {}
    return {"transplant_tumors": float(cfg["transplant_tumors"]),
            "transplant_axial_only": bool(cfg.get("transplant_axial_only"))}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trainer.ensemble", description=__doc__.split("\n")[0],
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument("--lesion", required=True, action="append",
                        help="artifact folder of the lesion-map model; given twice, the second map joins (the maps' "
                        "log-odds averaged; the overlays show the first)")
    parser.add_argument("--classifier", required=True, action="append",
                        help="artifact folder of the slice classifier; given twice, the second (used as it is, "
                        "never moved towards --fine-tuned) joins with the classifiers' log-odds averaged")
    parser.add_argument("--fine-tuned", default="", help="artifact folder of a fine-tune of the classifier "
                        "(started from its weights): the ensemble's classifier is the weights --alpha of the "
                        "way from the classifier's to this one's (WiSE-FT)")
    parser.add_argument("--alpha", type=float, default=0.0, help="with --fine-tuned: share of the fine-tune in "
                        "the classifier's weights, in [0, 1]")
    parser.add_argument("--mirror", default="none", choices=MIRROR_CHOICES,
                        help="members that also score the image mirrored left to right, their log-odds "
                        "averaged (flip test-time augmentation in the graph; 'lesion' mirrors every map; each "
                        "mirrored member costs its share of the scoring time again)")
    parser.add_argument("--classifier-floor", type=float, default=None, metavar="LOG_ODDS",
                        help="the lowest log-odds each classifier may give (e.g. -5.5: probability 0.004), so that "
                        "no classifier vetoes a lesion the maps find with more confidence than it ever gave a "
                        "validation tumor (v30, notes row VF); unbounded when left out")
    parser.add_argument("--overlay", default="", metavar="ARTIFACT",
                        help="a lesion-map artifact whose map the overlays, the lesion areas and the OOD guard read "
                        "in place of the first --lesion's; it weighs 0 in the score (v31: a map trained only to "
                        "outline, docs/model_v4_notes.md row OUT)")
    parser.add_argument("--orientation", default="", metavar="ARTIFACT",
                        help="an orientation artifact (python -m trainer.orientation) the image passes first: a slice "
                        "it is sure was turned by a quarter reaches every member upright, and the map is turned "
                        "back onto the image as given")
    parser.add_argument("--half-turn-confidence", type=float, default=None, metavar="P",
                        help="with --orientation: also turn back a slice the network calls upside down with "
                        "probability above P (at least the network's own confidence, below 1; tried at 0.9999, "
                        "docs/model_v4_notes.md row HALF); left out, an upside-down slice reaches the members as it "
                        "came")
    parser.add_argument("--out", required=True, help="folder for best.keras and fit.json")
    args = parser.parse_args(argv)
    if args.alpha and not args.fine_tuned:
        parser.error("--alpha moves the classifier towards --fine-tuned: name that artifact")
    if args.half_turn_confidence is not None and not args.orientation:
        parser.error("--half-turn-confidence is a rule of --orientation's network: name that artifact")
    if args.half_turn_confidence is not None and not 0.25 <= args.half_turn_confidence < 1:
        parser.error(f"--half-turn-confidence is a probability below 1, got {args.half_turn_confidence}")
    model, info = build(args.lesion[0], args.classifier[0], args.fine_tuned or None, args.alpha, args.mirror,
                        more_lesions=args.lesion[1:], more_classifiers=args.classifier[1:],
                        classifier_floor=args.classifier_floor, overlay=args.overlay or None,
                        orientation=args.orientation or None, half_turn_confidence=args.half_turn_confidence)
    os.makedirs(args.out, exist_ok=True)
    model.save(os.path.join(args.out, "best.keras"))
    with open(os.path.join(args.out, "fit.json"), "w") as f:
        # what lesion_train --from-checkpoint reads; nothing was fitted here (the members' fits are summed)
        json.dump({"fit_seconds": info["fit_seconds"], "best_epoch_mean_val_auc": 0.0,
                   "members": info["members"]}, f, indent=1)
    tuned = f" moved {args.alpha:g} of the way to {args.fine_tuned}" if args.fine_tuned else ""
    print(f"Ensemble of {' + '.join(args.lesion)} (lesion map) and {' + '.join(args.classifier)}{tuned} (classifier) written to "
          f"{args.out}/best.keras")


if __name__ == "__main__":
    main()
