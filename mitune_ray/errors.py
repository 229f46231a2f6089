"""The one exception type users see.

Every user-facing failure is a `MituneError` whose message is one line that names the bad value,
where it came from, and how to fix it. The CLI prints it without a traceback and exits with 2.
"""

import re

# How a MituneError raised in a Ray worker reads in the traceback text the driver gets.
_REMOTE = re.compile(r"mitune_ray\.errors\.MituneError: (.+)")


class MituneError(Exception):
    """A problem with the user's input, configuration or storage, explained in one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


def user_error_in(exc: BaseException) -> MituneError | None:
    """The MituneError behind an exception that Ray wrapped (task, actor, dataset or training
    errors), if that is what failed; None otherwise.

    Worker and Ray Data task errors reach the driver wrapped, some only as traceback text, so the
    message is looked for in every exception of the chain (causes, contexts, Ray's `cause`, Ray
    Train's `worker_failures`) and in its text.

    Example:
        >>> err = RuntimeError("Traceback ... mitune_ray.errors.MituneError: bad shard x")
        >>> user_error_in(ValueError("wrapped")) is None, str(user_error_in(err))
        (True, 'bad shard x')
    """
    seen, todo = set(), [exc]
    while todo:
        err = todo.pop(0)
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        if type(err) is MituneError:
            return MituneError(str(err))
        found = _REMOTE.search(str(err))
        if found:
            return MituneError(found.group(1).strip())
        if isinstance(err, MituneError):  # Ray's dual-class wrapper of a worker's MituneError
            return MituneError(str(err))
        todo += [getattr(err, "cause", None), err.__cause__, err.__context__]
        todo += list((getattr(err, "worker_failures", None) or {}).values())
    return None
