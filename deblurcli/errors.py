"""User-facing errors.

Anything a user can cause (bad path, corrupt image, unknown model, checksum mismatch,
out of memory) is raised as a :class:`DeblurError` subclass. The CLI prints its message as
one line and exits with ``exit_code``; library callers can catch it like any exception.
"""

from __future__ import annotations

from collections.abc import Callable


class _NamesParameters:
    """A message that names library parameters as ``{name}`` marks (see :class:`DeblurError`):
    ``str()`` spells them as parameters, :meth:`for_cli` as command-line flags."""

    option: str | None = None
    mentions: tuple[str, ...] = ()

    def _template(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return name_parameters(self._template(), self.option, self.mentions, str)

    def for_cli(self) -> str:
        """The message as the command line prints it: parameters spelled as flags."""
        return name_parameters(self._template(), self.option, self.mentions, flag_name)


class DeblurError(_NamesParameters, Exception):
    """An error whose message is meant for the user, not a traceback.

    The library never spells a command-line flag: it does not know which command it serves.
    A message names parameters as the library spells them, and the CLI names their flags
    instead (:meth:`for_cli`):

    * ``option`` is the offending parameter; the message reads as a sentence about it
      ("must be >= 0" with ``option="tile_overlap"``: "tile_overlap must be >= 0", on the
      command line "--tile-overlap must be >= 0"), or marks its spot with ``{option}``
      ("unknown {option} 'x'").
    * ``mentions`` are further parameters the message names, each marked ``{name}``
      ("{init} and {resume} exclude each other" with ``mentions=("init", "resume")``:
      "init and resume exclude each other", on the command line "--init and --resume
      exclude each other"). Other braces in the message are left as they are.
    """

    exit_code: int = 1

    def __init__(
        self, message: str = "", *, option: str | None = None, mentions: tuple[str, ...] = ()
    ):
        super().__init__(message)
        self.option = option
        self.mentions = tuple(mentions)

    def _template(self) -> str:
        return str(self.args[0]) if self.args else ""

    def extended(
        self, before: str = "", after: str = "", *, mentions: tuple[str, ...] = ()
    ) -> DeblurError:
        """A new error of this class whose message is ``before`` + this one + ``after``.

        The parameters this message names keep their naming; ``before``/``after`` may mark
        further ``mentions`` as ``{name}``.
        """
        message = self._template()
        if self.option and "{option}" not in message:
            message = f"{{option}} {message}"
        named = (*self.mentions, *(m for m in mentions if m not in self.mentions))
        return type(self)(f"{before}{message}{after}", option=self.option, mentions=named)


class Note(_NamesParameters):
    """A line for the user that is no error (a logged warning), naming parameters as
    :class:`DeblurError` does: ``log.warning(Note("{loss} is unused", mentions=("loss",)))``
    logs "loss is unused"; the CLI's log handler prints :meth:`for_cli`, "--loss is unused".
    """

    def __init__(self, message: str, *, option: str | None = None, mentions: tuple[str, ...] = ()):
        self.message, self.option, self.mentions = message, option, tuple(mentions)

    def _template(self) -> str:
        return self.message


def name_parameters(
    message: str, option: str | None, mentions: tuple[str, ...], spell: Callable[[str], str]
) -> str:
    """``message`` with ``{name}`` of each mention (and ``option``) spelled by ``spell``;
    an ``option`` whose spot is not marked leads the sentence."""
    for name in mentions:
        message = message.replace(f"{{{name}}}", spell(name))
    if not option:
        return message
    if "{option}" in message:
        return message.replace("{option}", spell(option))
    return f"{spell(option)} {message}"


def flag_name(parameter: str) -> str:
    """The command-line flag of a library parameter: ``tile_overlap`` -> ``--tile-overlap``."""
    return f"--{parameter.replace('_', '-')}"


class UsageError(DeblurError):
    """Arguments that cannot work together (parameters named as in :class:`DeblurError`)."""

    exit_code = 2


class UnknownArchError(UsageError, KeyError):
    """A name that is not in the architecture registry (a usage error: exit code 2)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return DeblurError.__str__(self)


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
