"""Errors of the ``dicebench`` command line that are the user's to fix, not the program's."""


class UsageError(Exception):
    """A usage or input error: the command line prints ``dicebench <cmd>: error: <message>`` as one
    line on stderr, without a traceback, and exits with status 2."""
