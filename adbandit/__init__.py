"""The ``adbandit`` command line and the wiring of the layers (the edge of the project).

``bandit`` (pure core), ``simulator``, ``experiments`` and ``serving`` are siblings; only
this package knows them all: :mod:`adbandit.cli` builds the command line from each
package's commands and :mod:`adbandit.wiring` hands the service its model source (the
MLflow registry) and demo market (the simulator).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("adbandit")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"
