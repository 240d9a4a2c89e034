"""Errors the host tool reports to its user: each names what failed and why."""


class PbxfwError(Exception):
    """Base class: the message is complete and meant for the user as is."""


class ConfigError(PbxfwError):
    """A board or recipe file is wrong; the message names the file and the key."""


class StageError(PbxfwError):
    """A build stage failed; the message names the stage, the command and the reason."""
