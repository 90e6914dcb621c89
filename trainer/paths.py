"""Path joining that works for local paths and gs:// URIs alike."""
import os
import posixpath


def join(*parts):
    return posixpath.join(*parts) if str(parts[0]).startswith("gs://") else os.path.join(*parts)
