"""Stage 4, AddHeatmaps: flagged rows -> the same rows with heatmap_path; writes overlay PNGs."""
import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from beam_pipeline import model_store
from screening_core import gradcam


class _Explainer:
    """Per-process holder of the model and its Grad-CAM function (shared by threads)."""

    def __init__(self, explain):
        self.explain = explain


class _AddHeatmaps(beam.DoFn):
    """Batch of (flagged row, model input, CAM map or None) -> rows with heatmap_path; writes overlay PNGs.

    The scoring pass returns the map wherever it equals Grad-CAM (gradcam.cam_head), so
    usually this only upsamples and draws. Otherwise Grad-CAM runs here on TensorFlow,
    batched (one call per image cost more than the scoring itself), with the model loaded
    on first need, once per process."""

    def __init__(self, model_uri, write_dir, final_dir, lesion_map=False, map_level=gradcam.LESION_LEVEL):
        self._model_uri = model_uri
        self._map_level = map_level
        self._lesion_map = lesion_map  # the model's own lesion map (probabilities): drawn as outline + fill
        self._dir = write_dir.rstrip("/")
        self._final_dir = final_dir.rstrip("/")  # where rows say the PNG is once the result is promoted
        self._shared = shared.Shared()

    def _explain(self, x):
        def load():
            model, _ = model_store.load(self._model_uri)
            if gradcam.is_lesion_model(model):
                import keras
                twin = keras.Model(model.inputs, gradcam.review_output(model))
                return _Explainer(lambda x: gradcam.heatmaps_from_cam(
                    twin.predict_on_batch(np.asarray(x, np.float32)), x.shape[1:3], relative=False))
            return _Explainer(gradcam.make_explainer(model))
        return self._shared.acquire(load).explain(x)

    def process(self, batch):
        x = np.stack([x for _, x, _ in batch])
        if all(cam is not None for _, _, cam in batch):
            heats = gradcam.heatmaps_from_cam(np.stack([cam for _, _, cam in batch]), x.shape[1:3],
                                              relative=not self._lesion_map)
        else:
            heats = self._explain(x)
        for (row, x, _), heat in zip(batch, heats, strict=True):
            x, heat = gradcam.head_only(x, heat)  # burned-in text beside the head never reaches a report
            name = f"{row['content_sha256'][:20]}_{row['frame_index']}.png"
            with FileSystems.create(f"{self._dir}/{name}", mime_type="image/png",
                                    compression_type=CompressionTypes.UNCOMPRESSED) as f:
                if self._lesion_map:
                    f.write(gradcam.lesion_overlay_png(x, heat, row["tumor_probability"], level=self._map_level))
                else:
                    f.write(gradcam.overlay_png(x, heat, row["tumor_probability"]))
            yield {**row, "heatmap_path": f"{self._final_dir}/{name}"}


class AddHeatmaps(beam.PTransform):
    """(flagged row, model input, CAM map or None) -> the row with heatmap_path; overlay PNGs written to
    `write_dir` (staging), rows naming them under `final_dir` (where the promoted result will have them)."""

    def __init__(self, model_uri, write_dir, final_dir, lesion_map=False, map_level=gradcam.LESION_LEVEL):
        super().__init__()
        self._fn = _AddHeatmaps(model_uri, write_dir, final_dir, lesion_map, map_level)

    def expand(self, flagged):
        return (flagged
                | "BatchFlagged" >> beam.BatchElements(min_batch_size=16, max_batch_size=64)
                | "DrawHeatmaps" >> beam.ParDo(self._fn))
