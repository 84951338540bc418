"""qwen3-api: a serving system for Qwen3 models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qwen3-api")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
