"""RunInference model handler for chunks of preprocessed images.

Why not Beam's TFModelHandlerNumpy: it imports tensorflow_hub, which pulls in
tf-keras and a second Keras, and it batches one image per element. Here an
element is already a stacked chunk (n, H, W, 1), so per-element overhead is
paid once per chunk; RunInference groups chunks up to `batch_size` images
(a fixed number of chunks per call) and shares one loaded model per worker process.
"""
import os

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


class _OnnxScorer:
    """The same contract as _Scorer, on ONNX Runtime (model.onnx from `python -m trainer.export`)."""

    def __init__(self, onnx_path, reference, feature_names, threads=0):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.reference = reference
        self.names = feature_names

    def __call__(self, x):
        outputs = self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})
        probs = np.asarray(outputs[0], np.float32).reshape(-1)
        if self.reference is None:
            return probs, None
        from trainer import ood
        feats = dict(zip(self.names, outputs[1:], strict=True))
        feats[ood.HISTOGRAM] = ood.input_histogram(x)
        return probs, self.reference.score(feats)


def resolve_engine(requested, metadata, gpu_workers):
    """The engine a run uses: ONNX Runtime on CPU when the artifact has it, else TensorFlow.

    Measured on this project's CPU machine (bench/engines.py) ONNX Runtime is the
    faster CPU engine; TensorFlow stays for GPU workers."""
    has_onnx = "onnxruntime" in (metadata.get("engines") or {})
    if requested == "onnxruntime":
        if not has_onnx:
            raise ValueError("--engine onnxruntime: the artifact has no model.onnx (python -m trainer.export)")
        return "onnxruntime"
    if requested == "tensorflow" or gpu_workers or not has_onnx:
        return "tensorflow"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "tensorflow"
    return "onnxruntime"


class KerasChunkModelHandler(ModelHandler):
    """Examples: float32 arrays (n, H, W, 1).

    Predictions: PredictionResult(chunk, (probs[n], ood_scores[n] or None)); the
    OOD score comes from the same forward pass when the artifact has a reference."""

    def __init__(self, model_uri, batch_size=64, chunks_per_batch=1, engine="tensorflow", model_copies=0,
                 threads=0):
        # A fixed count of chunks per batch. (Weighting BatchElements by images per
        # chunk emits an empty batch when the first chunk outweighs its initial
        # target, which KeyedModelHandler cannot unpack.)
        super().__init__(min_batch_size=chunks_per_batch, max_batch_size=chunks_per_batch)
        self._model_uri = model_uri
        self._batch_size = batch_size
        self._engine = engine
        self._model_copies = model_copies  # > 0: one model per worker VM shared by its processes (GPU)
        self._threads = threads  # ONNX Runtime intra-op threads; 0 = its default (all cores)
        self._model_id = None

    def update_model_path(self, model_path=None):
        """Beam's model-update hook: the next load_model reads the new artifact (verified like the first)."""
        if model_path:
            self._model_uri = model_path
            self._model_id = None

    def validate_inference_args(self, inference_args):
        if inference_args:
            raise ValueError(f"this handler takes no inference_args (got {sorted(inference_args)}); "
                             "set the batch size and engine with the job's flags")

    def share_model_across_processes(self):
        return self._model_copies > 0

    def model_copies(self):
        return max(self._model_copies, 1)

    def _identify(self):
        md = model_store.metadata(self._model_uri)
        self._model_id = f"{md['name']}/{md['version']}/{md['model_sha256'][:12]}/{self._engine}"

    def load_model(self):
        self._identify()
        reference = model_store.load_reference(self._model_uri)
        if self._engine == "onnxruntime":
            from trainer import artifact
            local = model_store.stage(self._model_uri)
            md = artifact.verify(local)
            entry = md["engines"]["onnxruntime"]
            return _OnnxScorer(os.path.join(local, entry["file"]), reference, entry["feature_outputs"], self._threads)
        _gpu_memory_growth()
        model, _ = model_store.load(self._model_uri)
        return _Scorer(model, reference)

    def run_inference(self, batch, model, inference_args=None):
        sizes = [len(chunk) for chunk in batch]
        x = np.concatenate(batch, axis=0) if len(batch) > 1 else batch[0]
        parts = [model(x[i:i + self._batch_size]) for i in range(0, len(x), self._batch_size)]
        probs = np.concatenate([p for p, _ in parts]) if parts else np.zeros(0, np.float32)
        oods = np.concatenate([o for _, o in parts]) if parts and parts[0][1] is not None else None
        cuts = np.cumsum(sizes)[:-1]
        ood_split = np.split(oods, cuts) if oods is not None else [None] * len(batch)
        return [PredictionResult(chunk, (p, o), model_id=self._model_id)
                for chunk, p, o in zip(batch, np.split(probs, cuts), ood_split, strict=True)]

    def get_num_bytes(self, batch):
        return int(sum(chunk.nbytes for chunk in batch))

    def get_metrics_namespace(self):
        return "BrainScreening"
