"""The command line of `brain-score`: our flags first, Beam's behind --help-beam.

Beam's PipelineOptions silently discards flags it does not know, so a typo
(`--treshold 0.5`) would run the night with the artifact's threshold and exit
0. Here every flag must be known to this job or to some Beam options class;
an unknown one is an error with a did-you-mean hint. Values are validated
before any work starts.
"""
import argparse
import difflib
import os
import re
import sys

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from beam_pipeline import errors
from beam_pipeline.options import ScreeningOptions

DESCRIPTION = """Score brain-MRI images in archives (zip, tar, tar.gz/bz2/xz) and loose files
(PNG/JPEG/BMP/TIFF/DICOM) with a trained model and write one Parquet row per image.

Exit codes: 0 = done and the share of images with an error row is at most
--max-error-fraction; 3 = done, but more errors than that; 4 = done, but the input
drifted, so its scores are not to be trusted as they stand (--no-fail-on-drift: 0);
5 = done, but --write-back could not store some series' reports in the PACS; 2 =
job-level problem before any work (bad flag or value, missing/tampered model, no
input, output not writable or owned by someone else)."""


class UsageError(errors.ScreeningError, ValueError):
    """A flag or value that stops the job before it starts (exit 2)."""


def _all_classes():
    seen, todo = {}, list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop()
        seen.setdefault(str(cls), cls)
        todo.extend(cls.__subclasses__())
    return list(seen.values())


def beam_parser():
    """Every flag any PipelineOptions class defines (as Beam's own get_all_options builds it)."""
    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    for cls in _all_classes():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser


def own_parser():
    parser = argparse.ArgumentParser(
        prog="brain-score", description=DESCRIPTION, allow_abbrev=False, add_help=False,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=30),
        epilog="Every Apache Beam pipeline option (--runner, --project, --region, --temp_location, "
               "--direct_num_workers, ...) is accepted too: see --help-beam.")
    ScreeningOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument("--help-beam", action="store_true", help="list Apache Beam's own options and exit")
    for action in parser._actions:  # defaults in every line, as ArgumentDefaultsHelpFormatter would
        if action.help and action.default not in (None, argparse.SUPPRESS, False) and "%(default)" not in action.help:
            action.help += " (default: %(default)s)"
    return parser


def _option_strings(parser):
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def check_flags(argv):
    """Raise UsageError for a flag no options class knows; print help and exit for -h/--help(-beam)."""
    own = own_parser()
    if "-h" in argv or "--help" in argv:
        own.print_help()
        sys.exit(0)
    if "--help-beam" in argv:
        parser = beam_parser()
        parser.add_argument("-h", "--help", action="help")
        parser.print_help()
        sys.exit(0)
    parser = beam_parser()
    _, unknown = parser.parse_known_args(argv)
    bad = [u.split("=", 1)[0] for u in unknown if u.startswith("-")]
    if bad:
        known = _option_strings(parser)
        hints = []
        for flag in bad:
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
            hints.append(f"{flag}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise UsageError(f"unknown flag(s): {', '.join(hints)}; see brain-score --help")
    stray = [u for u in unknown if not u.startswith("-")]
    if stray:
        raise UsageError(f"unexpected argument(s) {stray}: every value belongs to a flag, e.g. --input PATTERN")


def validate(opts):
    """Values that would only fail (or silently do nothing) deep inside the run."""
    def need(ok, message):
        if not ok:
            raise UsageError(message)
    if opts.threshold is not None:
        need(opts.threshold == opts.threshold and 0.0 < opts.threshold < 1.0,
             f"--threshold must be strictly between 0 and 1, got {opts.threshold}")
    need(opts.batch_size >= 1, f"--batch-size must be >= 1, got {opts.batch_size}")
    need(opts.chunk_size >= 1, f"--chunk-size must be >= 1, got {opts.chunk_size}")
    need(opts.max_member_bytes >= 1, f"--max-member-bytes must be >= 1, got {opts.max_member_bytes}")
    need(opts.run_id is None or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", opts.run_id) is not None,
         f"--run-id must be 1-64 letters, digits, '.', '_' or '-' (it names files), got {opts.run_id!r}")
    need(opts.model_copies >= 0, f"--model-copies must be >= 0, got {opts.model_copies}")
    need(opts.inference_threads >= 0, f"--inference-threads must be >= 0, got {opts.inference_threads}")
    need(opts.dicomweb_max_parallel >= 1,
         f"--dicomweb-max-parallel must be >= 1, got {opts.dicomweb_max_parallel}")
    need(opts.num_shards >= 0, f"--num-shards must be >= 0, got {opts.num_shards}")
    from beam_pipeline import dicomweb
    need(not any(dicomweb.has_userinfo(p) for p in (opts.input or [])), dicomweb.USERINFO_REFUSED)
    if opts.group_pattern:
        try:
            re.compile(opts.group_pattern)
        except re.error as e:
            raise UsageError(f"--group-pattern {opts.group_pattern!r} is not a regular expression: {e}") from e
    for p in opts.input or []:
        if dicomweb.is_dicomweb(p):
            try:
                dicomweb.check_filters(p)
            except ValueError as e:
                raise UsageError(str(e)) from e
    if opts.dicomweb_credentials:
        try:
            dicomweb.read_credentials(opts.dicomweb_credentials)
        except dicomweb.CredentialsError as e:
            raise UsageError(str(e)) from e
    need(0.0 <= opts.max_error_fraction <= 1.0,
         f"--max-error-fraction must be between 0 and 1, got {opts.max_error_fraction}")


def apply_config(argv):
    """Expand `--config FILE.yaml` (a mapping of flag -> value) in place, before the other flags.

    Flags on the command line come after the file's, so a scalar given on both
    wins from the command line; a list (e.g. `input:`) becomes repeated flags.
    True/False turn a switch on/off (`--no-<flag>` for --heatmaps/--report).
    A nightly schedule keeps its flags in a reviewed file instead of a
    300-character cron line.
    """
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        return list(argv)
    out, path, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a YAML file")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    import yaml
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"--config {path}: {e}") from e
    if not isinstance(config, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag: value, got {type(config).__name__}")
    actions = own_parser()._actions
    negatable = {a.option_strings[0] for a in actions if isinstance(a, argparse.BooleanOptionalAction)}
    switches = {o for a in actions if a.nargs == 0 for o in a.option_strings}
    expanded = []
    for key, value in config.items():
        flag = "--" + str(key).lstrip("-")
        if isinstance(value, bool) != (flag in switches) and flag in {o for a in actions for o in a.option_strings}:
            if flag in switches:
                raise UsageError(f"--config {path}: {key} is a switch: write true or false, not {value!r}")
            raise UsageError(f"--config {path}: {key} was read by YAML as the boolean {value} (YAML reads NO, off, "
                             "yes, ... unquoted as booleans); quote the value")
        if isinstance(value, bool):
            if value:
                expanded.append(flag)
            elif flag in negatable:
                expanded.append("--no-" + flag[2:])
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (dict, list)) or v is None:
                raise UsageError(f"--config {path}: {key} must be a value or a list of values")
            expanded += [flag, str(v)]
    from_file = sum(1 for a in expanded if a == "--input")
    from_line = sum(1 for a in out if a == "--input" or a.startswith("--input="))
    if from_file and from_line:  # both are scored: say so, a config's inputs are easy to forget
        from beam_pipeline import console
        console.emit("inputs", f"Inputs: {from_file} from --config {path} and {from_line} from the command line, "
                               "all scored")
    return expanded + out


def split_input_lists(patterns):
    """One --input may hold a comma- or newline-separated list: Flex Template parameters cannot repeat."""
    out = []
    for value in patterns or []:  # a DICOMweb query may hold commas (StudyDate ranges do not, lists do)
        out += [value.strip()] if value.startswith(("dicomweb://", "dicomwebs://")) else \
            [p.strip() for p in re.split(r"[,\n]", value) if p.strip()]
    return out


def log_format(argv):
    """--log-format's value, read before the options are parsed (so start-up errors use it too)."""
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--log-format="):
            return arg.split("=", 1)[1]
    return "text"


def expand_folders(patterns):
    """A local folder given as --input means every file under it, recursively."""
    out = []
    for p in patterns or []:
        if p.startswith(("dicomweb://", "dicomwebs://")):
            out.append(p)
        elif "://" not in p and os.path.isdir(p):
            out.append(os.path.join(p, "**"))
        elif "://" in p and p.endswith("/"):
            out.append(p + "**")
        else:
            out.append(p)
    return out


def quiet_logging():
    """Beam's root-logger warnings off and TensorFlow's C++ log level down, before anything imports them."""
    import logging
    logging.getLogger().setLevel(logging.ERROR)  # Beam's root-logger warnings (resource module, ...)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def quiet_tensorflow():
    """Import TensorFlow with its start-up noise hidden (absl/oneDNN/CUDA lines on stderr).

    TensorFlow 2.21 writes those lines from C++ before absl logging is set
    up, so TF_CPP_MIN_LOG_LEVEL does not reach them: stderr is pointed at
    /dev/null for the import and the device probe only. Python exceptions
    still surface (they are raised after stderr is restored). Called only by
    runs that use TensorFlow (its engine, or Grad-CAM heatmaps): the import
    is 5 s of start-up that an ONNX Runtime run without heatmaps does not pay.
    """
    quiet_logging()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
        tf.config.list_physical_devices()
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
