"""What follows a failure is pure: retry (when), expire, fail, or requeue on failure, as
plain steps, with no database."""

from __future__ import annotations

from evq.outcomes import (
    Planned,
    RetryPolicy,
    after_fail,
    after_failure,
    after_lease_expired,
)
from evq.retry import Fixed

ERROR = {"type": "E", "message": "boom", "traceback": ""}


def test_an_error_with_attempts_left_is_retried_after_the_backoff():
    steps = after_failure("error", ERROR, 0, RetryPolicy(3, Fixed(5)))
    assert steps == [Planned("error", {"error": ERROR, "errors": 1, "retry_at": None,
                                       "retry_in": 5.0}, due_in=5.0)]
    assert steps[0].stamped(100.0)["retry_at"] == 105.0


def test_the_last_attempt_expires_and_an_unrecoverable_error_fails():
    policy = RetryPolicy(2, Fixed(5), exhausted_hook=True)
    assert [s.kind for s in after_failure("error", ERROR, 1, policy)] == ["error", "expire"]
    assert after_failure("error", ERROR, 1, policy)[1].data["hook"] == \
        "on_max_attempts_exhausted"
    unrecoverable = after_failure("error", ERROR, 0, policy, retryable=False)
    assert unrecoverable[1] == Planned("fail", {"reason": "unrecoverable"})


def test_a_broken_backoff_ends_the_job_instead_of_raising():
    def broken(errors: int) -> float:
        raise ValueError("nope")

    steps = after_failure("error", ERROR, 0, RetryPolicy(None, broken))
    assert steps[-1].kind == "fail" and steps[-1].data["reason"] == "backoff_failed"
    rescue = after_failure("rescue", ERROR, 0, RetryPolicy(None, broken))
    assert rescue[-1].kind == "expire"  # a rescuer does not hold the attempt


def test_a_job_failed_by_its_handler_fails_at_once_or_is_requeued_on_failure():
    policy = RetryPolicy(3, Fixed(999))
    assert after_fail(ERROR, 0, policy) == [
        Planned("error", {"error": ERROR, "errors": 1, "retry_at": None}),
        Planned("fail", {"reason": "handler"})]
    requeued = after_fail(ERROR, 0, policy, requeue_after=30.0)
    assert requeued[0].kind == "error" and requeued[0].due_in == 30.0  # not the backoff
    assert [s.kind for s in after_fail(ERROR, 2, policy, requeue_after=30.0)] == \
        ["error", "expire"]


def test_a_lost_lease_is_rescued_per_the_policy():
    steps = after_lease_expired("w1", 0, RetryPolicy(3, Fixed(1)), job="j (job)")
    assert steps[0].kind == "rescue" and steps[0].due_in == 1.0
    assert steps[0].data["reason"] == "lease_expired" and steps[0].data["holder"] == "w1"
    assert steps[0].data["error"]["message"] == "worker w1 stopped renewing its lease"
    assert [s.kind for s in after_lease_expired("w1", 2, RetryPolicy(3, Fixed(1)))] == \
        ["rescue", "expire"]
