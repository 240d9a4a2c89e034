"""Errors the agent reports to its user (the message names file, key and reason)."""


class PolicyError(ValueError):
    pass


class ContentError(ValueError):
    """A file the agent reads (board info, update state) holds what it cannot use."""
