# syntax=docker/dockerfile:1
# Dataflow worker images (custom SDK containers), the Flex Template launcher and the trainer.
#
#   docker build --target worker     -t $REPO/brain-screening-worker:0.1.0 .
#   docker build --target worker-gpu -t $REPO/brain-screening-worker-gpu:0.1.0 .
#   docker build --target launcher   -t $REPO/brain-screening-launcher:0.1.0 \
#       --build-arg LAUNCHER_BASE=gcr.io/dataflow-templates-base/python311-template-launcher-base@sha256:<digest> .
#   docker build --target trainer    -t $REPO/brain-screening-trainer:0.1.0 .
#
# Every base is a fixed tag or a digest. Each image installs its dependencies in a layer that
# depends only on pyproject.toml and requirements/constraints.txt (the exact versions CI ran), then the
# code with --no-deps: a code edit rebuilds seconds of layers, not TensorFlow.
# PYTHON_VERSION and BEAM_VERSION must match pyproject.toml (tests/test_packaging.py checks).
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0
ARG TF_GPU_IMAGE=tensorflow/tensorflow:2.21.0-gpu
# The launcher base has no versioned tags worth trusting: pin the digest you have verified
# (docker pull ...:latest && docker inspect --format '{{index .RepoDigests 0}}' ...). No default on purpose.
ARG LAUNCHER_BASE

# ---- dependency lists, derived from pyproject.toml once --------------------------
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
base = project["dependencies"]
open("/src/base.txt", "w").write("\n".join(base) + "\n")
# The trainer: the imaging libraries and TensorBoard, not Beam, its IO or its inference engines.
beam_only = ("apache-beam", "google-cloud-storage", "pyarrow", "onnxruntime", "dicomweb-client", "highdicom")
train = [d for d in base if not d.startswith(beam_only)] + project["optional-dependencies"]["train"]
open("/src/train.txt", "w").write("\n".join(train) + "\n")
PY

# ---- models/ with the default model only (setup.py names it; models/ holds every version, ten times its size)
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS default-model
WORKDIR /src
COPY setup.py ./
COPY beam_pipeline/model_store.py ./beam_pipeline/model_store.py
COPY models ./models
RUN python -c "import setup; print(setup.copy_default_model('models', '/out/models'))"

# ---- CPU worker: Beam's own SDK image + this project ----------------------------
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS worker
WORKDIR /opt/brain-screening
COPY --from=requirements /src/base.txt /tmp/base.txt
COPY requirements/constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/base.txt
COPY pyproject.toml setup.py README.md ./
COPY screening_core ./screening_core
COPY beam_pipeline ./beam_pipeline
COPY --from=default-model /out/models ./models
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import beam_pipeline.run, screening_core.preprocessing; from beam_pipeline import model_store; \
import os; assert os.path.isdir(model_store.DEFAULT_MODEL), model_store.DEFAULT_MODEL"
# The SDK image's entrypoint (/opt/apache/beam/boot) and default user are kept.

# ---- GPU worker: TensorFlow's own GPU image (its CUDA and cuDNN), Beam's boot copied in
# One CUDA stack: the one TensorFlow was built against; no second CUDA base, no tensorflow[and-cuda].
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam-sdk
FROM ${TF_GPU_IMAGE} AS worker-gpu
ARG PYTHON_VERSION
RUN python3 -c "import sys; v = '%d.%d' % sys.version_info[:2]; \
assert v == '${PYTHON_VERSION}', f'TensorFlow GPU image has Python {v}; the Beam SDK image has ${PYTHON_VERSION}'"
WORKDIR /opt/brain-screening
COPY --from=requirements /src/base.txt /tmp/base.txt
COPY requirements/constraints.txt /tmp/constraints.txt
RUN python3 -m pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/base.txt
COPY pyproject.toml setup.py README.md ./
COPY screening_core ./screening_core
COPY beam_pipeline ./beam_pipeline
COPY --from=default-model /out/models ./models
RUN python3 -m pip install --no-cache-dir --no-deps . \
 && python3 -c "import beam_pipeline.run; import tensorflow as tf; print(tf.__version__)"
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]

# ---- Flex Template launcher (also usable as the CPU worker image) ---------------
FROM ${LAUNCHER_BASE} AS template-base
FROM worker AS launcher
COPY --from=template-base /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/brain-screening/beam_pipeline/run.py \
    FLEX_TEMPLATE_PYTHON_SETUP_FILE=/opt/brain-screening/setup.py \
    BRAIN_SCREENING_NO_WAIT=1

# ---- Trainer (Vertex AI custom job or a multi-GPU VM): MirroredStrategy over all GPUs; no Beam
FROM ${TF_GPU_IMAGE} AS trainer
WORKDIR /opt/brain-screening
COPY --from=requirements /src/train.txt /tmp/train.txt
COPY requirements/constraints.txt /tmp/constraints.txt
RUN python3 -m pip install --no-cache-dir -c /tmp/constraints.txt -r /tmp/train.txt
COPY pyproject.toml setup.py README.md ./
COPY screening_core ./screening_core
COPY trainer ./trainer
COPY beam_pipeline ./beam_pipeline
COPY models ./models
RUN python3 -m pip install --no-cache-dir --no-deps . \
 && python3 -c "import trainer.task" \
 && ! python3 -c "import apache_beam" 2>/dev/null
ENTRYPOINT ["python3", "-m", "trainer.task"]
