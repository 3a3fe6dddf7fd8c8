"""pai: private AI for a CRM inside an air-gapped perimeter."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pai")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
