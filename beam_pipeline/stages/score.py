"""Stage 3, ScoreImages: (row templates, image batch) -> scored rows, via Beam's RunInference.

One forward pass gives the probability, the OOD score, the review map (a lesion-first model's own
lesion map, from which the lesion area is read; else the class-activation map where it equals Grad-CAM) and,
for a model with an orientation network, the quarter turn it undid; the label is decided once, in `schema.label`. Flagged rows leave on FLAGGED_TAG,
with their model input and map, when heatmaps are on (stage 4, heatmaps.py).
"""
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from beam_pipeline import console, schema
from beam_pipeline.inference import ChunkModelHandler
from screening_core.gradcam import LESION_LEVEL

FLAGGED_TAG = "flagged"


def lesion_area(lesion_map, input_side, input_scale, pixel_area_mm2, level=LESION_LEVEL):
    """{lesion_area_px, lesion_area_mm2}: the map's cells at or above `level` (the artifact's map level)
    as an area of the source image.

    A cell covers (input_side / map side)² model-input pixels, each input_scale² source pixels."""
    m = np.asarray(lesion_map).reshape(np.shape(lesion_map)[0], -1)
    cells = int(np.count_nonzero(m >= level))
    if input_scale is None:
        return {"lesion_area_px": None, "lesion_area_mm2": None}
    px = cells * (input_side / m.shape[0]) ** 2 * float(input_scale) ** 2
    return {"lesion_area_px": px, "lesion_area_mm2": px * pixel_area_mm2 if pixel_area_mm2 else None}


class _ToRows(beam.DoFn):
    """(row templates, PredictionResult) -> one scored row per image.

    Flagged rows go to FLAGGED_TAG with their model input when heatmaps are on.
    """

    def __init__(self, threshold, heatmaps, ood_threshold=None, threshold_source="artifact", lesion_map=False,
                 map_level=LESION_LEVEL):
        self._threshold = threshold
        self._lesion_map = lesion_map
        self._map_level = map_level
        self._threshold_source = threshold_source
        self._heatmaps = heatmaps
        self._ood_threshold = ood_threshold
        self._ok = Metrics.counter("BrainScreening", "images_ok")
        self._flagged = Metrics.counter("BrainScreening", "images_flagged")

    def process(self, keyed):
        templates, result = keyed
        scored_at = schema.now()
        console.COUNTS.add(scored=len(templates))
        probs, oods, cams, turns = result.inference
        oods = [None] * len(templates) if oods is None else oods
        cams = [None] * len(templates) if cams is None else cams
        turns = [None] * len(templates) if turns is None else turns
        for row, x, p, ood, cam, turn in zip(templates, result.example, probs, oods, cams, turns, strict=True):
            p = float(p)
            in_dist = None if ood is None else bool(ood <= self._ood_threshold)
            label = schema.label(p, self._threshold, in_dist)
            self._ok.inc()
            row = {**row, "status": schema.STATUS_OK, "tumor_probability": p, "predicted_label": label,
                   "ood_score": None if ood is None else float(ood), "in_distribution": in_dist,
                   "threshold": float(self._threshold), "threshold_source": self._threshold_source,
                   "turned_back_degrees": None if turn is None else int(round(float(turn))), "scored_at": scored_at}
            if self._lesion_map and cam is not None:
                row.update(lesion_area(cam, x.shape[0], row.get("input_scale"), row.get("pixel_area_mm2"),
                                       self._map_level))
            if label == schema.LABEL_TUMOR:
                self._flagged.inc()
                if self._heatmaps:
                    yield beam.pvalue.TaggedOutput(FLAGGED_TAG, (row, x, cam))
                    continue
            yield row


class ScoreImages(beam.PTransform):
    """(row templates, image batch) -> main: scored rows; FLAGGED_TAG: (flagged row, model input, CAM map)
    when `heatmaps` is on (those rows leave only there, to come back from AddHeatmaps)."""

    def __init__(self, model_uri, threshold, batch_size, chunk_size, heatmaps=False, ood_threshold=None,
                 threshold_source="artifact", engine="tensorflow", model_copies=0, threads=0, lesion_map=False,
                 map_level=LESION_LEVEL):
        super().__init__()
        self._handler: Any = KeyedModelHandler(ChunkModelHandler(
            model_uri, batch_size, chunks_per_batch=max(1, batch_size // max(chunk_size, 1)), engine=engine,
            model_copies=model_copies, threads=threads))
        self._to_rows = _ToRows(threshold, heatmaps, ood_threshold, threshold_source, lesion_map, map_level)

    def expand(self, batches):
        return (batches
                | "RunInference" >> RunInference(self._handler)
                | "ToRows" >> beam.ParDo(self._to_rows).with_outputs(FLAGGED_TAG, main="rows"))
