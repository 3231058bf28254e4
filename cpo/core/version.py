"""cpo's version, as `cpo --version`, run.json and `cpo.__version__` report it."""

__version__ = "0.2.0"
