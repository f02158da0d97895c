"""Exceptions for problems the user can fix.

The CLI prints a `ShadowEdgeError` as one or two lines without a traceback (unless
`--debug`), so each message names the file or value and the next step.
"""


class ShadowEdgeError(Exception):
    """A problem with the user's input, files or environment."""


class CheckpointError(ShadowEdgeError):
    """A shadow adapter checkpoint is missing, unreadable or does not match its base."""


class UnsupportedModelError(ShadowEdgeError):
    """The base or shadow architecture is not one the exporter can build graphs for."""


class BundleError(ShadowEdgeError):
    """A bundle folder is missing files, corrupt or of an unknown format version."""


class ChecksumError(ShadowEdgeError):
    """A file's sha256 differs from the one recorded for it."""


class ModelFetchError(ShadowEdgeError):
    """A model file could not be obtained from the package registry."""


class GenerationError(ShadowEdgeError, ValueError):
    """Invalid generation input: prompt, sampling value or chat message."""
