"""The errors of :mod:`videobench.api` that mean "nothing could run" (the CLI's exit status 2, one line).

A failure of one case (a video that could not be generated or scored) is no exception: it is recorded in the
result objects and in the files (``cases.jsonl``, ``scores.csv``), and the other cases go on (the CLI's exit
status 1). Everything here is raised before any work, or when the run as a whole cannot continue; ``str(error)``
is the one line the CLI prints after ``error:``, and ``__cause__`` keeps the library error it came from.
"""

from __future__ import annotations


class VideoBenchError(Exception):
    """Nothing could run: the settings, the data, the weights, the RESULTS folder or the launch are unusable."""


class SettingsError(VideoBenchError, ValueError):
    """A setting is invalid: an unknown method, suite, metric, case id or option, a bad value or combination."""


class DataMissingError(VideoBenchError, FileNotFoundError):
    """A suite's benchmark data is not installed (``videobench data download SUITE`` fixes it)."""


class WeightsMissingError(VideoBenchError, FileNotFoundError):
    """Model weights are missing or unreadable; the message lists every missing model and where to put it."""


class ResultsFolderError(VideoBenchError):
    """A RESULTS folder cannot be used: not a folder, a method folder, a conflicting run.json, nothing to report."""


class LaunchError(VideoBenchError):
    """Several processes cannot work together: a rank died or disagrees, or the job launcher refused the job."""
