"""The TOML reader: ``tomllib`` from Python 3.11, the ``tomli`` backport before it."""

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["tomllib"]
