"""The one exception type for problems the user can fix (kept import-light: the CLI loads it first)."""


class UserError(Exception):
    """A problem the user can fix; its message is one line that names the fix."""
