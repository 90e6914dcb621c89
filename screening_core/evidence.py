"""Two slice probabilities combined as independent evidence: sigmoid(logit(p_a) + logit(p_b)).

Why (model v9, docs/model_v4_notes.md): the lesion-first map (v8) and the slice classifier (v3) fail in
different places. v3 knows brain-mri's collection (AUC 0.989) but reads level and sequence elsewhere
(held-out LGG site 0.863, brats-sample FLAIR 0.576); v8 finds lesions at sites it never saw (0.954, 0.883)
but flags tumor-free brain-mri slices v3 clears. Adding their log-odds (multiplying their odds) keeps a
slice high only when neither model has strong evidence against a tumor, and kept both strengths on the
validation split, the held-out site and brats-sample.

A Keras layer registered under this package, so an artifact that uses it loads in safe mode wherever
screening_core is imported (artifact.load imports this module); ONNX export turns it into plain ops.
"""
import keras

EPS = 1e-7  # float32 probabilities saturate at 0 and 1; their log-odds are clipped to +-16


@keras.saving.register_keras_serializable(package="screening_core")
class OddsProduct(keras.layers.Layer):
    """[p_a, p_b] (each (n, 1)) -> sigmoid(logit(p_a) + logit(p_b)), (n, 1) float32."""

    def call(self, inputs):
        from keras import ops
        total = 0.0
        for p in inputs:
            p = ops.clip(ops.cast(p, "float32"), EPS, 1.0 - EPS)
            total = total + ops.log(p) - ops.log(1.0 - p)
        return ops.sigmoid(total)

    def compute_output_shape(self, input_shape):
        return input_shape[0]
