# syntax=docker/dockerfile:1
# Dataflow worker images (custom SDK containers) and the Flex Template launcher.
#
#   docker build --target worker   -t $REPO/brain-screening-worker:0.1.0 .
#   docker build --target worker-gpu -t $REPO/brain-screening-worker-gpu:0.1.0 .
#   docker build --target launcher -t $REPO/brain-screening-launcher:0.1.0 .
#   docker build --target trainer  -t $REPO/brain-screening-trainer:0.1.0 .
#
# PYTHON_VERSION and BEAM_VERSION must match setup.py (tests/test_packaging.py checks).
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
ARG CUDA_IMAGE=nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04

# ---- CPU worker: Beam's own SDK image + this project ----------------------------
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS worker
WORKDIR /opt/brain-screening
COPY setup.py README.md ./
COPY trainer ./trainer
COPY beam_pipeline ./beam_pipeline
COPY models ./models
RUN pip install --no-cache-dir . \
 && python -c "import beam_pipeline.run, trainer.preprocessing"
ENV BRAIN_SCREENING_MODEL=/opt/brain-screening/models/brain-tumor-cnn/3
# The SDK image's entrypoint (/opt/apache/beam/boot) and default user are kept.

# ---- GPU worker: CUDA runtime + Python + Beam's boot copied in -------------------
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam-sdk
FROM ${CUDA_IMAGE} AS worker-gpu
ARG PYTHON_VERSION
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python${PYTHON_VERSION} python${PYTHON_VERSION}-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python${PYTHON_VERSION} -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/brain-screening
COPY setup.py README.md ./
COPY trainer ./trainer
COPY beam_pipeline ./beam_pipeline
COPY models ./models
RUN pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir . "tensorflow[and-cuda]>=2.21,<2.22"
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
ENV BRAIN_SCREENING_MODEL=/opt/brain-screening/models/brain-tumor-cnn/3
ENTRYPOINT ["/opt/apache/beam/boot"]

# ---- Flex Template launcher (also usable as the CPU worker image) ---------------
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS template-base
FROM worker AS launcher
COPY --from=template-base /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/brain-screening/beam_pipeline/run.py \
    FLEX_TEMPLATE_PYTHON_SETUP_FILE=/opt/brain-screening/setup.py \
    BRAIN_SCREENING_NO_WAIT=1

# ---- Trainer (Vertex AI custom job or a multi-GPU VM): MirroredStrategy over all GPUs
FROM tensorflow/tensorflow:2.21.0-gpu AS trainer
WORKDIR /opt/brain-screening
COPY setup.py README.md ./
COPY trainer ./trainer
COPY beam_pipeline ./beam_pipeline
RUN pip install --no-cache-dir .
ENTRYPOINT ["python", "-m", "trainer.task"]
