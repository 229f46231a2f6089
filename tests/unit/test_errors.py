"""One way to find the user's error behind Ray's wrappers (generation, scoring and training)."""

from mitune_ray.errors import MituneError, user_error_in


def test_a_mitune_error_is_found_through_causes_contexts_and_worker_failures():
    assert str(user_error_in(MituneError("bad  value\n here"))) == "bad value here"
    try:
        try:
            raise MituneError("model folder x is missing")
        except MituneError as inner:
            raise RuntimeError("actor died") from inner
    except RuntimeError as outer:
        assert str(user_error_in(outer)) == "model folder x is missing"

    class TrainingFailed(Exception):  # Ray Train's: failures by worker rank, as text
        worker_failures = {0: RuntimeError("Traceback (most recent call last):\n  ...\n"
                                           "mitune_ray.errors.MituneError: selected shard y is "
                                           "not a parquet file\n")}

    assert str(user_error_in(TrainingFailed("2 workers failed"))) == (
        "selected shard y is not a parquet file")

    class Wrapped(Exception):  # Ray Data's: the task error as `cause`
        def __init__(self, cause):
            super().__init__("dataset failed")
            self.cause = cause

    assert str(user_error_in(Wrapped(MituneError("prompt shard z is empty")))) == (
        "prompt shard z is empty")
    assert user_error_in(Wrapped(ValueError("a bug"))) is None
    assert user_error_in(RuntimeError("no user error here")) is None
