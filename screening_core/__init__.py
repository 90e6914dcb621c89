"""The serving core: what both the trainer and the scoring job need, and nothing else.

Preprocessing (image bytes -> model input), the model-artifact contract, the
metrics both sides compute, the review-map runtime (class-activation and lesion
maps, overlays) and the out-of-distribution runtime. Dependencies point
trainer -> screening_core <- beam_pipeline; this package imports neither
(tests/test_packaging.py enforces it), so a scoring worker carries no training
code.
"""
