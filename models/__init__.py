"""The committed model artifacts, installed as the package `brain_screening_models`.

Nothing to import: the package exists so that wheels and the sdist a Dataflow
worker installs carry the pipeline's default model (beam_pipeline.model_store
finds it through this package's location).
"""
