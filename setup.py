"""Shim: the packaging lives in pyproject.toml; this file lists the packages.

Kept because Beam's --setup_file and Flex Templates' FLEX_TEMPLATE_PYTHON_SETUP_FILE
name a setup.py; Beam builds the worker sdist from it (`python -m build --sdist`,
or `python setup.py sdist` where `build` is missing). The packages are the ones
present: the scoring worker images (Dockerfile) copy no `trainer/` folder, since
the job needs only `screening_core` and `beam_pipeline`.
"""
import os

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = {"screening_core": "screening_core", "beam_pipeline": "beam_pipeline",
            "beam_pipeline.stages": "beam_pipeline/stages", "brain_screening_models": "models",
            "trainer": "trainer"}

setuptools.setup(packages=[name for name, folder in PACKAGES.items()
                           if os.path.isfile(os.path.join(HERE, folder, "__init__.py"))])
