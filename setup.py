"""Shim: the packaging lives in pyproject.toml; this file lists the packages and the model they carry.

Kept because Beam's --setup_file and Flex Templates' FLEX_TEMPLATE_PYTHON_SETUP_FILE
name a setup.py; Beam builds the worker sdist from it (`python -m build --sdist`,
or `python setup.py sdist` where `build` is missing). The packages are the ones
present: the scoring worker images (Dockerfile) copy no `trainer/` folder, since
the job needs only `screening_core` and `beam_pipeline`.

Only the default model ships as package data (`default_model_files`): models/ holds every
version (473 MB at v44, sixteen times the default's 29 MB), and each Dataflow job stages the sdist and
each worker installs it. Other versions are scored from a checkout or a gs:// copy (`--model`).
"""
import functools
import os
import re
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = {"screening_core": "screening_core", "beam_pipeline": "beam_pipeline",
            "beam_pipeline.stages": "beam_pipeline/stages", "brain_screening_models": "models",
            "trainer": "trainer"}
# what an artifact folder ships: the contract's files, its card and the card's figures
ARTIFACT_PATTERNS = ("*.keras", "*.onnx", "*.npz", "*.json", "*.md", "*.png", "*.csv", "SHA256SUMS", "eda/*")


@functools.cache
def default_model_path(root=HERE):
    """models/-relative folder of the default model, read from beam_pipeline/model_store.py, the one place
    it is named (read, not imported: building the sdist must not need Beam)."""
    source = open(os.path.join(root, "beam_pipeline", "model_store.py")).read()
    m = re.search(r'^DEFAULT_MODEL_PATH = os\.path\.join\("([^"]+)", "([^"]+)"\)$', source, re.M)
    if not m:
        raise SystemExit("beam_pipeline/model_store.py: no DEFAULT_MODEL_PATH = os.path.join(\"<name>\", \"<version>\")")
    return f"{m.group(1)}/{m.group(2)}"


def default_model_files(root=HERE):
    return ["README.md", *(f"{default_model_path(root)}/{p}" for p in ARTIFACT_PATTERNS)]


def copy_default_model(models_dir, out_dir, root=HERE):
    """models/ with the default model only (the worker images' copy; the trainer image keeps every version)."""
    path = default_model_path(root)
    os.makedirs(out_dir, exist_ok=True)
    for name in ("__init__.py", "README.md"):
        shutil.copy2(os.path.join(models_dir, name), os.path.join(out_dir, name))
    shutil.copytree(os.path.join(models_dir, path), os.path.join(out_dir, path),
                    ignore=shutil.ignore_patterns("_work", "gradcam_sample.png"))
    return os.path.join(out_dir, path)


def ships(path, root=HERE):
    """Whether a file of the source tree goes into the sdist: anything but another model version."""
    parts = path.replace(os.sep, "/").split("/")
    if len(parts) >= 4 and parts[0] == "models":  # models/<name>/<version>/...
        return "/".join(parts[1:3]) == default_model_path(root)
    return True


if __name__ == "__main__":  # pip's build backend and `python setup.py sdist` run it as __main__
    import setuptools
    from setuptools.command.build_py import build_py
    from setuptools.command.sdist import sdist

    class DefaultModelSdist(sdist):
        """An egg-info's SOURCES.txt from an earlier build (a developer's editable install) is read back into
        every later sdist; leave other versions out of the release tree whatever it lists."""

        def make_release_tree(self, base_dir, files):
            super().make_release_tree(base_dir, [f for f in files if ships(f)])

    class DefaultModelBuildPy(build_py):
        """build/lib keeps what earlier builds copied there (every version, before v30) and the wheel takes
        build/lib whole: remove other versions before building."""

        def run(self):
            root = os.path.join(self.build_lib, "brain_screening_models")
            for name in os.listdir(root) if os.path.isdir(root) else ():
                for version in os.listdir(os.path.join(root, name)) if os.path.isdir(os.path.join(root, name)) else ():
                    if not ships(f"models/{name}/{version}/"):
                        shutil.rmtree(os.path.join(root, name, version))
            super().run()

    setuptools.setup(packages=[name for name, folder in PACKAGES.items()
                               if os.path.isfile(os.path.join(HERE, folder, "__init__.py"))],
                     package_data={"brain_screening_models": default_model_files()},
                     exclude_package_data={"brain_screening_models": ["*/*/_work/*", "*/*/gradcam_sample.png"]},
                     cmdclass={"sdist": DefaultModelSdist, "build_py": DefaultModelBuildPy})
