"""The one exception type whose message is meant for the person using the studio."""


class StudioError(ValueError):
    """A request that cannot be served, with a message written for the person who sent it."""
