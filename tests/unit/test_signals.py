"""The stop flag's rules, without MPI: what each signal does, when rank 0 says so, and
that after `release` the stop signals stay ignored (not reset to their default action)."""

from __future__ import annotations

import os
import signal

import pytest

from fedmpi import signals


@pytest.fixture
def handlers():
    """Restore this process's handlers (pytest's SIGINT among them) after each test."""
    saved = {s: signal.getsignal(s) for s in signals.SIGNALS}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    signals._flag = None


def test_install_is_once_per_process_and_handles_every_stop_signal(handlers):
    flag = signals.install()
    assert signals.install() is flag
    assert signals.StopFlag.install(3) is flag and flag.rank == 3
    for s in signals.SIGNALS:
        assert signal.getsignal(s) == flag.handle


@pytest.mark.parametrize("sig", signals.SIGNALS)
def test_a_stop_signal_is_recorded_not_fatal(handlers, capfd, sig):
    flag = signals.StopFlag.install(0)
    os.kill(os.getpid(), sig)
    assert flag.requested and flag.signal_name == sig.name
    err = capfd.readouterr().err
    assert f"rank 0 got {sig.name}: stopping after this round" in err
    assert ("Ctrl-C again to abort" in err) == (sig == signal.SIGINT)


def test_second_sigint_aborts_but_repeated_sigterm_does_not(handlers):
    flag = signals.StopFlag.install(1)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: still a graceful stop
    assert flag.requested and flag.signal_name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_before_the_rank_is_known_is_reported_by_rank_0_only(handlers, capfd):
    flag = signals.install()
    os.kill(os.getpid(), signal.SIGUSR1)  # before MPI_Init returned: rank unknown
    assert flag.requested and capfd.readouterr().err == ""
    flag.set_rank(0)
    assert "rank 0 got SIGUSR1" in capfd.readouterr().err
    flag.set_rank(0)  # said once
    assert capfd.readouterr().err == ""


def test_a_worker_says_nothing(handlers, capfd):
    flag = signals.StopFlag.install(2)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert flag.requested and capfd.readouterr().err == ""


def test_release_ignores_the_stop_signals_until_exit(handlers):
    signals.install()
    signals.release()
    for s in signals.SIGNALS:
        assert signal.getsignal(s) == signal.SIG_IGN  # Python's shutdown keeps SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)  # no effect
    assert signals.install().requested is False  # a new run in this process starts clean
