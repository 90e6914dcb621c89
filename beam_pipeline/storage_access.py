"""Fail in seconds, with a reason, when gs:// paths cannot be reached.

Without this, a laptop with no Google credentials spends ~26 s probing for a
metadata server, then Beam connects anonymously and the storage client
retries the 401s for its 120 s deadline before a traceback. The job instead
checks, before any work: are there credentials at all (without the metadata
server probe unless this is a Google Cloud VM), and can each bucket be listed
(one request, no retries, short timeout).
"""
import os

from beam_pipeline import errors

PROBE_TIMEOUT_S = 15
ADC_FILE = os.path.join("~", ".config", "gcloud", "application_default_credentials.json")


class AccessError(errors.ScreeningError, RuntimeError):
    pass


def _buckets(uris):
    return sorted({u[len("gs://"):].split("/", 1)[0] for u in uris if u and u.startswith("gs://")})


def _may_have_credentials():
    """True if google.auth.default() can find something without a 26 s metadata-server probe."""
    from google.auth.compute_engine import _metadata
    if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return True
    if os.path.exists(os.path.expanduser(ADC_FILE)):
        return True
    if os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_IP"):
        return True
    if os.environ.get("NO_GCE_CHECK") == "true":
        return False
    return _metadata.detect_gce_residency_linux()  # a Google Cloud VM (Dataflow worker, Vertex, GCE)


def check(uris, pipeline_options):
    """Raise AccessError unless every bucket named in `uris` can be listed."""
    buckets = _buckets(uris)
    if not buckets:
        return
    from apache_beam.options.pipeline_options import GoogleCloudOptions
    emulated = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
    no_auth = pipeline_options.view_as(GoogleCloudOptions).no_auth
    if not emulated and not no_auth:
        if not _may_have_credentials():
            raise AccessError(
                "gs:// paths need Google Cloud credentials and none were found: run "
                "`gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service "
                "account key file")
        import google.auth
        from google.auth import exceptions as auth_exceptions
        try:
            google.auth.default()
        except auth_exceptions.GoogleAuthError as e:
            raise AccessError(f"Google Cloud credentials unusable: {e}") from e
    from apache_beam.io.gcp import gcsio
    from google.api_core import exceptions as api_exceptions
    client = gcsio.create_storage_client(pipeline_options, use_credentials=not no_auth)
    for bucket in buckets:
        try:
            next(iter(client.bucket(bucket).list_blobs(max_results=1, timeout=PROBE_TIMEOUT_S, retry=None)), None)
        except api_exceptions.NotFound as e:
            raise AccessError(f"bucket gs://{bucket} does not exist") from e
        except (api_exceptions.Forbidden, api_exceptions.Unauthorized) as e:
            raise AccessError(f"no permission to list gs://{bucket} with these credentials "
                              f"(needs storage.objects.list): {getattr(e, 'message', e)}") from e
        except Exception as e:  # network, DNS, TLS, timeouts, refresh errors
            raise AccessError(f"cannot reach gs://{bucket}: {type(e).__name__}: {e}") from e
