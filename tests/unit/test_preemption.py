"""The signal handlers, with real signals sent to this process: the first one waits for the
step, a second stops at once, a stop never cuts a critical section in two. (A real `cpo train`
subprocess is stopped in tests/integration/test_faults_cli.py.)"""

from __future__ import annotations

import os
import signal
import time

import pytest

from cpo_cli.engine.preemption import StopNow, StopSignals, critical_section


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.05)  # the handler runs at the next bytecode of the main thread


def test_first_signal_waits_second_stops_at_once() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    signals = StopSignals(checkpoint_first=True)
    with signals.installed():
        signals.armed = True
        _send(signal.SIGUSR1)
        assert signals.received == signal.SIGUSR1 and signals.exit_code == 138
        with pytest.raises(StopNow) as caught:
            _send(signal.SIGTERM)
        assert caught.value.signum == signal.SIGUSR1  # the first signal names the stop
    assert signal.getsignal(signal.SIGTERM) is previous


def test_before_training_or_without_jit_checkpoint_the_first_signal_stops() -> None:
    for signals in (StopSignals(checkpoint_first=True), StopSignals(checkpoint_first=False)):
        with signals.installed():
            signals.armed = signals.checkpoint_first is False
            with pytest.raises(StopNow) as caught:
                _send(signal.SIGTERM)
            assert caught.value.signum == signal.SIGTERM


def test_a_critical_section_finishes_before_the_stop() -> None:
    signals = StopSignals(checkpoint_first=False)
    done = []
    with signals.installed(), pytest.raises(StopNow), critical_section():
        _send(signal.SIGTERM)
        done.append("renamed")
    assert done == ["renamed"]
