"""Builds the cffi extension `native._sha512chain` at install time (metadata lives in pyproject.toml)."""

from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
