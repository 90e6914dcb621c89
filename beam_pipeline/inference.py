"""RunInference model handler for chunks of preprocessed images.

Why not Beam's TFModelHandlerNumpy: it imports tensorflow_hub, which pulls in
tf-keras and a second Keras, and it batches one image per element. Here an
element is already a stacked chunk (n, H, W, 1), so per-element overhead is
paid once per chunk; RunInference groups chunks up to `batch_size` images
(a fixed number of chunks per call) and shares one loaded model per worker process.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_pipeline import model_store


def _gpu_memory_growth():
    """Dataflow starts one SDK process per vCPU and all of them see the GPU; without
    memory growth the first process's TensorFlow reserves all GPU memory. Returns the GPUs."""
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised in this process
            pass
    return gpus


def _tensorflow_threads(threads):
    """TensorFlow's own pools sized like ONNX Runtime's session (`--inference-threads`): with one scoring
    process per vCPU, every process's pools taking every core spin-wait against each other (the test
    suite in 2 processes on 2 vCPUs: 341 -> 308 CPU-s, bench/scoring.py for scoring). Settable only
    before TensorFlow initialises; a process that already ran TensorFlow keeps what it has."""
    import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass


class _Scorer:
    """What one worker process loads: the model, as one graph that also returns the OOD guard's
    features (with a reference), the class-activation map (where it equals Grad-CAM) and the quarter turn
    an orientation network undid (where the model has one)."""

    def __init__(self, model, reference):
        from screening_core import gradcam, ood, upright
        self.reference = reference
        self.names = ood.layer_names(model) if reference is not None else []
        self.has_cam = gradcam.has_review_map(model)
        self.has_turn = upright.has_orientation(model)
        self.features = ood.feature_model(model, self.names, cam=self.has_cam, turn=self.has_turn)

    def __call__(self, x):
        """(probabilities[n], ood_scores[n] or None, cam maps[n, h, w, 1] or None, turns[n] or None) for a batch."""
        outputs = self.features.predict_on_batch(x)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        return _split(outputs, self.names, self.reference, self.has_cam, x, self.has_turn)


def _split(outputs, names, reference, has_cam, x, has_turn=False):
    """(probabilities, OOD scores or None, CAM maps or None, degrees turned back or None) from
    [probability, *features of names, cam?, turn?]."""
    from screening_core import ood
    outputs = list(outputs)
    turns = np.asarray(outputs.pop(), np.float32).reshape(-1) if has_turn else None
    cams = np.asarray(outputs[-1], np.float32) if has_cam else None
    if reference is None:
        return np.asarray(outputs[0], np.float32).reshape(-1), None, cams, turns
    probs, feats = ood.split_outputs(names, outputs[:1 + len(names)], x)
    return probs, reference.score(feats), cams, turns


class _OnnxScorer:
    """The same contract as _Scorer, on ONNX Runtime (model.onnx from `python -m trainer.export`)."""

    def __init__(self, onnx_path, reference, feature_names, threads=0, has_cam=False, has_turn=False):
        import onnxruntime as ort
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.reference = reference
        self.names = feature_names if reference is not None else []
        self.has_cam = has_cam
        self.has_turn = has_turn

    def __call__(self, x):
        outputs = self.session.run(None, {self.input: np.ascontiguousarray(x, np.float32)})
        return _split(outputs, self.names, self.reference, self.has_cam, x, self.has_turn)


def scores_heatmaps(metadata: dict[str, Any], engine: str) -> bool:
    """Whether this engine's scoring pass returns the heatmaps' class-activation maps (no Grad-CAM model)."""
    if engine == "onnxruntime":
        return bool((metadata.get("engines") or {}).get("onnxruntime", {}).get("cam_output"))
    return False  # TensorFlow: decided when the model is loaded (gradcam.cam_head); TensorFlow is loaded anyway


def resolve_engine(requested: str, metadata: dict[str, Any], gpu_workers: bool) -> str:
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


class ChunkModelHandler(ModelHandler):
    """Examples: float32 arrays (n, H, W, 1).

    Predictions: PredictionResult(chunk, (probs[n], ood_scores[n] or None, cam maps or None, degrees turned back[n]
    or None)); the OOD score, the class-activation map (screening_core/gradcam.py: cam_head) and the turn an
    orientation network undid (screening_core/upright.py: turn_output) come from the same forward pass."""

    def __init__(self, model_uri: str, batch_size: int = 64, chunks_per_batch: int = 1, engine: str = "tensorflow",
                 model_copies: int = 0, threads: int = 0) -> None:
        # A fixed count of chunks per batch. (Weighting BatchElements by images per
        # chunk emits an empty batch when the first chunk outweighs its initial
        # target, which KeyedModelHandler cannot unpack.)
        super().__init__(min_batch_size=chunks_per_batch, max_batch_size=chunks_per_batch)
        self._model_uri = model_uri
        self._batch_size = batch_size
        self._engine = engine
        self._copies = model_copies  # > 0: one model per worker VM shared by its processes (GPU)
        self._threads = threads  # CPU threads of the engine per process; 0 = its default (all cores)
        self._model_id: str | None = None

    def update_model_path(self, model_path: str | None = None) -> None:
        """Beam's model-update hook: the next load_model reads the new artifact (verified like the first)."""
        if model_path:
            self._model_uri = model_path
            self._model_id = None

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(f"this handler takes no inference_args (got {sorted(inference_args)}); "
                             "set the batch size and engine with the job's flags")

    def share_model_across_processes(self) -> bool:
        return self._copies > 0

    def model_copies(self) -> int:
        return max(self._copies, 1)

    def _identify(self):
        md = model_store.metadata(self._model_uri)
        self._model_id = f"{md['name']}/{md['version']}/{md['model_sha256'][:12]}/{self._engine}"

    def load_model(self):
        self._identify()
        reference = model_store.load_reference(self._model_uri)
        if self._engine == "onnxruntime":
            from screening_core import artifact
            local = model_store.stage(self._model_uri)
            md = artifact.verify(local)
            entry = md["engines"]["onnxruntime"]
            return _OnnxScorer(os.path.join(local, entry["file"]), reference, entry["feature_outputs"], self._threads,
                               has_cam=scores_heatmaps(md, "onnxruntime"), has_turn=bool(entry.get("turn_output")))
        if not _gpu_memory_growth() and self._threads:
            _tensorflow_threads(self._threads)
        model, _ = model_store.load(self._model_uri)
        return _Scorer(model, reference)

    def run_inference(self, batch: Any, model: Any, inference_args: dict[str, Any] | None = None) -> Any:
        sizes = [len(chunk) for chunk in batch]
        x = np.concatenate(batch, axis=0) if len(batch) > 1 else batch[0]
        parts = [model(x[i:i + self._batch_size]) for i in range(0, len(x), self._batch_size)]
        cuts = np.cumsum(sizes)[:-1]

        def per_chunk(k):  # output k of every part, split back into chunks (None where the model has none)
            if not parts or parts[0][k] is None:
                return [None] * len(batch)
            return np.split(np.concatenate([part[k] for part in parts]), cuts)
        return [PredictionResult(chunk, (p, o, c, t), model_id=self._model_id)
                for chunk, p, o, c, t in zip(batch, per_chunk(0), per_chunk(1), per_chunk(2), per_chunk(3), strict=True)]

    def get_num_bytes(self, batch: Any) -> int:
        return int(sum(chunk.nbytes for chunk in batch))

    def get_metrics_namespace(self) -> str:
        return "BrainScreening"
