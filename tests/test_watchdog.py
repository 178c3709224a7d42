"""The stall watchdog: only an idle consumer with waiting input and an empty pipeline is stuck."""

from worker.ops.watchdog import StallWatchdog


def test_progress_or_pending_work_or_no_lag_is_never_a_stall() -> None:
    dog = StallWatchdog(stall_timeout_s=10)
    assert not dog.stalled(consumed=5, pending=0, lag=3, now=0)
    assert not dog.stalled(consumed=5, pending=0, lag=3, now=9)  # not long enough
    assert not dog.stalled(consumed=6, pending=0, lag=3, now=30)  # progress resets the clock
    assert not dog.stalled(consumed=6, pending=2, lag=3, now=60)  # a publish being retried
    assert not dog.stalled(consumed=6, pending=0, lag=0, now=90)  # caught up
    assert not dog.stalled(consumed=6, pending=0, lag=1, now=95)
    assert dog.stalled(consumed=6, pending=0, lag=1, now=100)


def test_zero_timeout_disables_it() -> None:
    dog = StallWatchdog(stall_timeout_s=0)
    dog.stalled(consumed=1, pending=0, lag=5, now=0)
    assert not dog.stalled(consumed=1, pending=0, lag=5, now=10_000)
