"""Child processes of the test bed: the error they raise, how they are stopped, and how they die with us."""

import ctypes
import signal
import subprocess

# How long a registry or a Podman service may take to answer after it is started.
STARTUP_TIMEOUT = 20.0


class ServiceError(RuntimeError):
    """A real component failed to start or a command against it failed; the message carries its output."""


def stop_process(process, timeout=5.0):
    """Terminate a child we started, escalating to SIGKILL, and reap it; None or an exited child is left alone."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def die_with_parent():
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when the thread that started it ends.

    For long-lived environments (tools/bench_env.py) whose children must not outlive them even when they are
    killed outright. The signal follows the starting thread, not the process, so start such children from a
    thread that lives as long as they should.
    """
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
