"""The version of scstn-vcn, its one source: the package metadata reads it at build time (pyproject.toml,
[tool.setuptools.dynamic]) by parsing this file, so it holds a string literal and imports nothing."""

__version__ = "0.1.0"
