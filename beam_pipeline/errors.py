"""The job's own errors share one base, so the launcher can tell them from coding bugs.

A `ScreeningError` carries a sentence for the operator (exit 2 when it stops a job); anything else
that escapes is a bug and keeps its traceback. Each subclass also keeps the built-in base it had
(ValueError, RuntimeError), so existing `except ValueError` sites behave as before.
"""


class ScreeningError(Exception):
    """A problem with the job's inputs, outputs, configuration or environment: said in one sentence."""
