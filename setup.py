"""Packaging for the brain-MRI tumor screening trainer and scoring pipeline.

The same file serves `pip install .`, the Dataflow `--setup_file` (Beam builds
an sdist from it and installs it on every worker) and the worker containers.

`tensorflow` (not `tensorflow-cpu`) is deliberate: one wheel runs on the CPU
in CI and on GPUs in training VMs and Dataflow GPU workers (the GPU image adds
`tensorflow[and-cuda]`, which only brings the CUDA libraries). Installing
both wheels would let one silently shadow the other, so only this one is named.
"""
import glob
import os

import setuptools

# The committed model ships with the package, so a Dataflow worker that installs
# the sdist (--setup_file) has the pipeline's default model.
MODEL_FILES = {}
for path in glob.glob("models/*/*/*") + glob.glob("models/*/*/eda/*"):
    # gradcam_sample.png shows training images: generated locally, never shipped
    if os.path.isfile(path) and "/_work/" not in path and not path.endswith("gradcam_sample.png"):
        MODEL_FILES.setdefault(os.path.join("share", "brain-mri-screening", os.path.dirname(path)), []).append(path)

REQUIRED = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.10,<4",
    "tensorboard>=2.20,<3",
    "apache-beam[gcp]>=2.77,<2.78",
    "google-cloud-storage>=2.14,<4",
    "numpy>=1.26,<3",
    "pillow>=10.3,<14",
    "pyarrow>=14,<27",
    "pydicom>=3.0,<3.1",
    "pylibjpeg>=2.0,<3",
    "pylibjpeg-libjpeg>=2.3,<3",
    "pylibjpeg-openjpeg>=2.4,<3",
    "matplotlib>=3.8,<4",
    "onnxruntime>=1.20,<2",  # the CPU inference engine (docs/performance.md)
    "dicomweb-client>=0.59,<1",  # dicomweb:// inputs (QIDO-RS / WADO-RS)
    "highdicom>=0.23,<1",  # --write-back: DICOM Structured Reports
]

EXPORT = [
    "tf2onnx>=1.17,<2",  # python -m trainer.export: model.keras -> model.onnx
]

TEST = [
    *EXPORT,
    "pytest>=8,<10",
    "gcp-storage-emulator>=2024.8.3",
]

setuptools.setup(
    name="brain-mri-screening",
    version="0.1.0",
    description="Train a brain-MRI tumor classifier and screen image archives with Apache Beam.",
    python_requires=">=3.10,<3.13",
    packages=setuptools.find_packages(include=["trainer", "trainer.*", "beam_pipeline", "beam_pipeline.*"]),
    data_files=sorted(MODEL_FILES.items()),
    install_requires=REQUIRED,
    extras_require={"test": TEST, "export": EXPORT},
    entry_points={
        "console_scripts": [
            "brain-train=trainer.task:main",
            "brain-score=beam_pipeline.run:main",
            "brain-validate=beam_pipeline.validate:main",
        ]
    },
)
