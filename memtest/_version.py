"""The one version source: pyproject.toml reads it (setuptools dynamic version), and so does the code."""

__version__ = "0.1.0"
