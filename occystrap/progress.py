"""The progress display on a terminal: one line per image in flight and an overall line, redrawn in place.

It draws nothing unless enabled (main.py enables it when stdout and stderr are terminals, or with --progress).
While it runs, log records written to its stream go through it: it clears its lines, lets the record through and
draws again on its next tick, so log lines and progress lines never interleave.
"""

import collections
import os
import sys
import threading
import time

from occystrap.terminal import printable

CLEAR_LINE = '\x1b[2K'
CLEAR_BELOW = '\x1b[J'
SPEED_WINDOW = 3.0      # seconds of samples the current speed is averaged over


def human_bytes(n):
    """12.3 MB style sizes (decimal units, as registries and skopeo report them)."""
    for unit in ('B', 'KB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return ('%d %s' % (n, unit)) if unit == 'B' else '%.1f %s' % (n, unit)
        n /= 1000.0


def human_duration(seconds):
    """0:07, 12:34 or 1:02:03."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return '%d:%02d:%02d' % (hours, minutes, seconds) if hours else '%d:%02d' % (minutes, seconds)


class Speed:
    """Bytes per second over the last few seconds of samples (the current speed, not the run's average)."""

    def __init__(self, window=SPEED_WINDOW):
        self.window = window
        self.samples = collections.deque()

    def update(self, now, total):
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window:
            self.samples.popleft()
        first_time, first_total = self.samples[0]
        if now - first_time <= 0:
            return 0.0
        return (total - first_total) / (now - first_time)


def _moved(handle):
    # Bytes that crossed the network for the image; a local source (tar://, docker://) moves only what it writes.
    return max(handle.downloaded, handle.uploaded) or handle.written


def image_line(handle, speed, width=None):
    """`name  3/7 layers  12.3 MB/45.6 MB  5.2 MB/s  ETA 0:07` for one image in flight.

    With `width`, a name too long to leave room for the figures loses its start (the tag end tells images apart).
    """
    moved = _moved(handle)
    sized = handle.expected and handle.downloaded + handle.uploaded and moved <= handle.expected
    amount = '%s/%s' % (human_bytes(moved), human_bytes(handle.expected)) if sized else human_bytes(moved)
    eta = 'ETA %s' % human_duration((handle.expected - moved) / speed) if sized and speed > 0 else 'ETA --'
    layers = '%d/%d layers' % (handle.layers_done, handle.layers) if handle.layers else 'opening'
    figures = '  %s  %s  %s/s  %s' % (layers, amount, human_bytes(speed), eta)
    name = printable(handle.name)
    if width is not None:
        room = max(width - 1 - len(figures), 8)
        if len(name) > room:
            name = '~' + name[len(name) - room + 1:]
    return name + figures


def overall_line(stats, speed, in_flight=()):
    """`total: 1/4 images, 9 layers, 30.1 MB down, 0 B up, 25.0 MB written, 5.1 MB/s, 0:12`.

    Layers are those of finished images plus those done so far of the images `in_flight`.
    """
    planned = stats.planned
    layers = stats.layers + sum(h.layers_done for h in in_flight)
    return 'total: %d/%s images, %d layers, %s down, %s up, %s written, %s/s, %s' % (
        stats.images, '?' if planned is None else planned, layers, human_bytes(stats.downloaded),
        human_bytes(stats.uploaded), human_bytes(stats.bytes), human_bytes(speed), human_duration(stats.seconds))


def fit(text, width):
    """`text` cut to fit in `width` columns minus one, so that it never wraps (a full last column would)."""
    width = max(width - 1, 1)
    return text if len(text) <= width else text[:max(width - 1, 0)] + '~'


class Progress:
    """Redraws the lines from RunContext.stats at most `1 / interval` times a second until stopped."""

    def __init__(self, stats, enabled, stream=None, interval=0.1, size=None):
        self.stats = stats
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval = max(interval, 0.1)    # at most ten redraws a second
        self._size = size                     # (columns, lines) for tests; otherwise asked of the terminal per draw
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self._drawn = 0                       # how many lines are on the screen now
        self._speeds = {}
        self._overall = Speed()
        self._handlers = []

    def __enter__(self):
        if self.enabled:
            self._route_logging()
            self._thread = threading.Thread(target=self._run, name='progress', daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            with self._lock:
                self._clear()
                self.stream.flush()
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self._handlers = []

    def lines(self, width=None):
        """The lines a redraw would show now: one per image in flight, then the overall line."""
        now = time.monotonic()
        handles = self.stats.in_flight()
        speeds = {}
        out = []
        for handle in handles:
            speed = self._speeds.get(id(handle)) or Speed()
            speeds[id(handle)] = speed
            out.append(image_line(handle, speed.update(now, _moved(handle)), width))
        self._speeds = speeds
        moved = max(self.stats.downloaded, self.stats.uploaded) or self.stats.bytes
        out.append(overall_line(self.stats, self._overall.update(now, moved), handles))
        return out

    def draw(self):
        """Replace the lines on the screen with the current ones (no more than the terminal has room for)."""
        columns, rows = self._terminal_size()
        lines = self.lines(columns)
        if len(lines) > rows - 1:
            lines = lines[:max(rows - 2, 0)] + lines[-1:]
        text = '\n'.join(CLEAR_LINE + fit(line, columns) for line in lines)
        with self._lock:
            self._clear()
            self.stream.write(text)
            self.stream.flush()
            self._drawn = len(lines)

    def write_above(self, text):
        """Write `text` (whole lines) where the progress lines are; they come back at the next redraw."""
        with self._lock:
            self._clear()
            self.stream.write(text)
            self.stream.flush()

    def _clear(self):
        # The cursor sits at the end of the last line drawn: go to the start of the first and clear downwards.
        if self._drawn:
            up = '\x1b[%dA' % (self._drawn - 1) if self._drawn > 1 else ''
            self.stream.write('\r' + up + CLEAR_BELOW)
            self._drawn = 0

    def _terminal_size(self):
        if self._size is not None:
            return self._size
        try:
            size = os.get_terminal_size(self.stream.fileno())
            return size.columns or 80, size.lines or 24
        except (AttributeError, OSError, ValueError):
            return 80, 24

    def _route_logging(self):
        import logging
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, 'stream', None) is self.stream:
                self._handlers.append((handler, handler.setStream(_Above(self))))

    def _run(self):
        while not self._stop.wait(self.interval):
            self.draw()


class _Above:
    """A stream for logging handlers while the display runs: each write goes above the progress lines."""

    def __init__(self, progress):
        self.progress = progress

    def write(self, text):
        self.progress.write_above(text)

    def flush(self):
        pass
