"""The one exception type users see.

Every user-facing failure is a `MituneError` whose message is one line that names the bad value,
where it came from, and how to fix it. The CLI prints it without a traceback and exits with 2.
"""


class MituneError(Exception):
    """A problem with the user's input, configuration or storage, explained in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
