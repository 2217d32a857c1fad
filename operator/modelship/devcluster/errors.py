"""The one error type of the local control plane: a message a user can act on, never a traceback."""


class DevClusterError(Exception):
    """Something the user can fix; the message says what happened and what to do next."""
