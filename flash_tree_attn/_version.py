# The one place the package version is written; setup.py, the wheel name and __version__ read it.
__version__ = "0.1.0"
