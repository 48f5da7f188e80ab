"""User-facing errors.

Anything a user can cause (bad path, corrupt image, unknown model, checksum mismatch,
out of memory) is raised as a :class:`DeblurError` subclass. The CLI prints its message as
one line and exits with ``exit_code``; library callers can catch it like any exception.
"""

from __future__ import annotations


class DeblurError(Exception):
    """An error whose message is meant for the user, not a traceback."""

    exit_code: int = 1

    def for_cli(self) -> str:
        """The message as the command line prints it (a :class:`UsageError` names the flag)."""
        return str(self)


class UsageError(DeblurError):
    """The command was given arguments that cannot work together.

    ``option`` names the offending parameter as the library spells it (``tile_overlap``);
    the message then reads as a sentence about it ("tile_overlap must be >= 0") for library
    callers, and the CLI names its flag instead (:meth:`for_cli`: "--tile-overlap must be
    >= 0"). A message that names the option elsewhere than first marks the spot with
    ``{option}`` ("unknown {option} 'x'"). The library never spells a flag itself: it does
    not know which command it serves.
    """

    exit_code = 2

    def __init__(self, message: str, *, option: str | None = None):
        super().__init__(message)
        self.option = option

    def __str__(self) -> str:
        return self._naming(self.option)

    def for_cli(self) -> str:
        """The message with ``option`` spelled as the command-line flag."""
        return self._naming(f"--{self.option.replace('_', '-')}" if self.option else None)

    def _naming(self, name: str | None) -> str:
        message = str(self.args[0]) if self.args else ""
        if not name:
            return message
        if "{option}" in message:
            return message.replace("{option}", name)
        return f"{name} {message}"


class UnknownArchError(UsageError, KeyError):
    """A name that is not in the architecture registry (a usage error: exit code 2)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return UsageError.__str__(self)


class ImageReadError(DeblurError):
    """A file that cannot be decoded as an image."""


class CheckpointError(DeblurError):
    """A weights file that is missing, corrupt, untrusted or does not match its model."""


class ManifestError(DeblurError):
    """``weights_manifest.toml`` (or a manifest named by ``DEBLURCLI_MANIFEST``) is invalid."""


class WeightsUnavailableError(CheckpointError):
    """Pretrained weights that are neither shipped, cached nor downloadable right now."""


class UnknownModelError(UsageError, WeightsUnavailableError):
    """A model name that is neither in the manifest nor a file (a usage error: exit code 2)."""


class ChecksumError(CheckpointError):
    """A weights file whose sha256 does not match the manifest."""


class PhotoPoolError(DeblurError):
    """The training photo pool cannot be fetched or prepared, or is not there yet."""


class DeviceMemoryError(DeblurError):
    """Even the smallest tile does not fit in the device's memory."""


class TrainingDivergedError(DeblurError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class OutputWriteError(DeblurError):
    """An output cannot be written at all: the disk is full, read-only or over quota."""
