"""Errors the agent reports to its user (the message names file, key and reason)."""


class PolicyError(ValueError):
    pass
