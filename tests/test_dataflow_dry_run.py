"""Build the Dataflow job offline (DataflowRunner --dry_run): graph and options.

Inputs, model and temp location live in the local GCS emulator, so the job
is built exactly as a real submission would build it, minus the API call.
"""
import os
import zipfile

from beam_pipeline import run
from tests import synth, tiny_model
from tests.conftest import BUCKET, upload

GPU_OPTION = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
IMAGE = "us-central1-docker.pkg.dev/hospital-ml/screening/brain-screening-worker:0.1.0"


def test_dataflow_job_graph_and_options(gcs, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    with zipfile.ZipFile(inputs / "a.zip", "w") as zf:
        zf.writestr("x.png", synth.encode(synth.brain_slice(0, 32)))
    upload(str(inputs), "df/archives")
    upload(tiny_model.write_tiny_artifact(tmp_path), "df/models/tiny/1")
    result = run.run([
        "--input", f"gs://{BUCKET}/df/archives/*.zip", "--output", f"gs://{BUCKET}/df/out/2026-11-26",
        "--model", f"gs://{BUCKET}/df/models/tiny/1", "--run-id", "nightly-2026-11-26",
        "--runner", "DataflowRunner", "--dry_run=True", "--no_auth",
        "--project", "hospital-ml", "--region", "europe-west4", "--job_name", "brain-screening-nightly",
        "--temp_location", f"gs://{BUCKET}/df/tmp", "--staging_location", f"gs://{BUCKET}/df/staging",
        "--sdk_container_image", IMAGE, "--sdk_location", "container",
        "--machine_type", "g2-standard-8", "--max_num_workers", "20",
        "--dataflow_service_options", GPU_OPTION,
    ], save_main_session=False)
    job = result.job
    names = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    for step in ("ExpandInputs/MatchInputs", "ExpandInputs/ListMembers", "ExpandInputs/SpreadChunks",
                 "DecodeImages/Decode", "ScoreImages/RunInference", "ScoreImages/ToRows",
                 "WriteResults/WriteParquet", "WriteResults/Finalise/Promote"):
        assert any(n == step or n.startswith(step + "/") for n in names), step
    envs = job.proto_pipeline.components.environments.values()
    assert any(IMAGE.encode() in e.payload for e in envs)
    from apache_beam.options.pipeline_options import GoogleCloudOptions, WorkerOptions
    gco = job.options.view_as(GoogleCloudOptions)
    workers = job.options.view_as(WorkerOptions)
    assert GPU_OPTION in gco.dataflow_service_options
    assert (gco.project, gco.region) == ("hospital-ml", "europe-west4")
    assert workers.machine_type == "g2-standard-8" and workers.max_num_workers == 20
    assert workers.sdk_container_image == IMAGE
    assert job.proto.name == "brain-screening-nightly"
    assert job.proto.type.name == "JOB_TYPE_BATCH"
    assert not os.path.exists("brain-screening-nightly")
