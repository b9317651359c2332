"""The one exception type the command line turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (a path, an option, a file): the message names the thing and says what is wrong."""
