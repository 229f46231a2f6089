"""The one exception type users see.

Every user-facing failure is a `MituneError` whose message is one line that names the bad value,
where it came from, and how to fix it. The CLI prints it without a traceback and exits with 2.
"""


class MituneError(Exception):
    """A problem with the user's input, configuration or storage, explained in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


def user_error_in(exc: BaseException) -> MituneError | None:
    """The MituneError behind an exception that Ray wrapped (task, actor or dataset errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MituneError):
            return MituneError(str(exc))
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None
