"""Errors whose message tells the user what to do; the CLI prints them as one line, no traceback."""


class UserError(Exception):
    """Base for problems the user can fix (a missing model, a bad option, unreadable input)."""
