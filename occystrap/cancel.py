"""Stopping a run at once: SIGINT, SIGTERM and SIGHUP cancel every transfer in flight, then the run cleans up.

main() installs `on_signal` for the three signals (only in the command path, never on import). The handler does
nothing but raise `Interrupted` in the main thread: taking a lock inside a signal handler could deadlock with the
code it interrupted. Whoever catches it first (RunContext.map, pipeline.for_each_image, main) calls
`Cancellation.cancel()`, which

- sets `cancelled`, a plain attribute that workers read between chunks (one attribute read per chunk),
- shuts down the socket of every connection the run's HTTP client opened (`trace` tracks them), so reads and
  writes blocked in the kernel (a download, an upload waiting for its answer) return at once,
- wakes retry waits (`sleep`), which then raise `Interrupted` too.

Workers then unwind through their usual clean-up (`except BaseException` blocks, outputs' abort(), upload
DELETEs), and the process exits with 128 + the signal's number.
"""

import signal
import socket
import threading
import weakref

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """The run was stopped by a signal; the exit status is 128 + its number (130 INT, 143 TERM, 129 HUP).

    A BaseException, like KeyboardInterrupt, so that `except Exception` clean-up code never swallows it, and not a
    KeyboardInterrupt, which click would turn into its own Abort.
    """

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum or signal.SIGINT)

    @property
    def exit_code(self):
        return 128 + self.signum

    def __str__(self):
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = 'signal %d' % self.signum
        return 'interrupted (%s)' % name


class Cancellation:
    """One run's stop switch, shared by every thread of the run."""

    def __init__(self):
        self.cancelled = False      # read per chunk by the byte path: keep it a plain attribute
        self.signum = None
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._closers = {}
        self._next = 0
        self._sockets = weakref.WeakSet()

    def check(self):
        """Raise Interrupted when the run was cancelled."""
        if self.cancelled:
            raise Interrupted(self.signum)

    def cancel(self, signum=signal.SIGINT):
        """Stop the run: later checks raise, registered closers run once (never call this from a signal handler)."""
        with self._lock:
            if self.cancelled:
                return
            self.signum = int(signum or signal.SIGINT)
            self.cancelled = True
            closers = list(self._closers.values())
            self._closers.clear()
            sockets = list(self._sockets)
        self._event.set()
        for sock in sockets:
            _shutdown(sock)
        for closer in closers:
            try:
                closer()
            except Exception:   # a closer of something that already ended: nothing to stop
                pass

    def sleep(self, seconds):
        """time.sleep that ends early, raising Interrupted, when the run is cancelled."""
        if self._event.wait(seconds) or self.cancelled:
            raise Interrupted(self.signum)

    def register(self, closer):
        """Run closer() if the run is cancelled while it is registered; returns a key for unregister()."""
        with self._lock:
            if not self.cancelled:
                self._next += 1
                self._closers[self._next] = closer
                return self._next
        closer()
        raise Interrupted(self.signum)

    def unregister(self, key):
        with self._lock:
            self._closers.pop(key, None)

    def track(self, sock):
        """Remember a connection's socket: cancel() shuts every one down (those opened later, to clean up, live)."""
        with self._lock:
            self._sockets.add(sock)

    def trace(self, event, info):
        """An httpcore trace hook (request extension 'trace') that tracks the socket of each new connection."""
        if event == 'connection.connect_tcp.complete':
            stream = info.get('return_value')
            sock = stream.get_extra_info('socket') if stream is not None else None
            if sock is not None:
                self.track(sock)


def _shutdown(sock):
    """Shut a socket down, so a thread blocked reading or writing it returns now (close() alone does not)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# What stops a run: our signal handler's Interrupted, or a KeyboardInterrupt from before it was installed.
STOPS = (Interrupted, KeyboardInterrupt)


def on_signal(signum, frame):
    """The handler main() installs for SIGINT, SIGTERM and SIGHUP: the first signal raises Interrupted.

    Later signals while the run cleans up are ignored, so a second Ctrl-C does not cut the clean-up short.
    """
    for other in SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def install():
    """Handle SIGINT, SIGTERM and SIGHUP as `on_signal` does; returns the previous handlers for restore().

    A signal ignored when we start stays ignored (nohup ignores SIGHUP, a shell's background job SIGINT). Only the
    main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in SIGNALS:
        handler = signal.getsignal(signum)
        if handler != signal.SIG_IGN:
            previous[signum] = handler
            signal.signal(signum, on_signal)
    return previous


def restore(previous):
    """Put back the handlers install() replaced (for in-process callers of main.main())."""
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
