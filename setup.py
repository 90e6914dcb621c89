"""Shim: the packaging lives in pyproject.toml.

Kept because Beam's --setup_file and Flex Templates' FLEX_TEMPLATE_PYTHON_SETUP_FILE
name a setup.py; Beam builds the worker sdist from it (`python -m build --sdist`,
or `python setup.py sdist` where `build` is missing).
"""
import setuptools

setuptools.setup()
