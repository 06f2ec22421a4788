"""migradetect: migrasomes, retraction fibers and cells in live-cell microscopy movies.

The core is GUI-free: arrays and tables in, arrays and tables out. Reading and writing
happen only in :mod:`migradetect.io` and :mod:`migradetect.report`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("migradetect")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

from migradetect.errors import ConfigError, InputError, MigradetectError

__all__ = ["ConfigError", "InputError", "MigradetectError", "__version__"]
