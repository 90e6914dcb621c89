"""RunInference model handler for chunks of preprocessed images.

Why not Beam's TFModelHandlerNumpy: it imports tensorflow_hub, which pulls in
tf-keras and a second Keras, and it batches one image per element. Here an
element is already a stacked chunk (n, H, W, 1), so per-element overhead is
paid once per chunk; RunInference groups chunks up to `batch_size` images
(a fixed number of chunks per call) and shares one loaded model per worker process.
"""
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_pipeline import model_store


def _gpu_memory_growth():
    """Dataflow starts one SDK process per vCPU and all of them see the GPU; without
    memory growth the first process's TensorFlow reserves all GPU memory."""
    import tensorflow as tf
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass


class _Scorer:
    """What one worker process loads: the model, and the OOD guard's feature model and reference."""

    def __init__(self, model, reference):
        self.model = model
        self.reference = reference
        if reference is not None:
            from trainer import ood
            self.names = ood.layer_names(model)
            self.features = ood.feature_model(model)

    def __call__(self, x):
        """(probabilities[n], ood_scores[n] or None) for a batch of model inputs."""
        if self.reference is None:
            return np.asarray(self.model.predict_on_batch(x), np.float32).reshape(-1), None
        from trainer import ood
        probs, feats = ood.split_outputs(self.names, self.features.predict_on_batch(x), x)
        return probs, self.reference.score(feats)


class KerasChunkModelHandler(ModelHandler):
    """Examples: float32 arrays (n, H, W, 1).

    Predictions: PredictionResult(chunk, (probs[n], ood_scores[n] or None)); the
    OOD score comes from the same forward pass when the artifact has a reference."""

    def __init__(self, model_uri, batch_size=64, chunks_per_batch=1):
        # A fixed count of chunks per batch. (Weighting BatchElements by images per
        # chunk emits an empty batch when the first chunk outweighs its initial
        # target, which KeyedModelHandler cannot unpack.)
        super().__init__(min_batch_size=chunks_per_batch, max_batch_size=chunks_per_batch)
        self._model_uri = model_uri
        self._batch_size = batch_size

    def load_model(self):
        _gpu_memory_growth()
        model, _ = model_store.load(self._model_uri)
        return _Scorer(model, model_store.load_reference(self._model_uri))

    def run_inference(self, batch, model, inference_args=None):
        sizes = [len(chunk) for chunk in batch]
        x = np.concatenate(batch, axis=0) if len(batch) > 1 else batch[0]
        parts = [model(x[i:i + self._batch_size]) for i in range(0, len(x), self._batch_size)]
        probs = np.concatenate([p for p, _ in parts]) if parts else np.zeros(0, np.float32)
        oods = np.concatenate([o for _, o in parts]) if parts and parts[0][1] is not None else None
        cuts = np.cumsum(sizes)[:-1]
        ood_split = np.split(oods, cuts) if oods is not None else [None] * len(batch)
        return [PredictionResult(chunk, (p, o)) for chunk, p, o in zip(batch, np.split(probs, cuts), ood_split, strict=True)]

    def get_num_bytes(self, batch):
        return int(sum(chunk.nbytes for chunk in batch))

    def get_metrics_namespace(self):
        return "BrainScreening"
