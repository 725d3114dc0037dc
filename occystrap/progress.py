"""A one-line progress display on a terminal; silent when stderr is a pipe or a file."""

import sys
import threading


def human_bytes(n):
    """12.3 MB style sizes (decimal units, as registries and skopeo report them)."""
    for unit in ('B', 'KB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return ('%d %s' % (n, unit)) if unit == 'B' else '%.1f %s' % (n, unit)
        n /= 1000.0


class Progress:
    """Redraws one status line from RunContext.stats a few times a second until stopped."""

    def __init__(self, stats, enabled, stream=None, interval=0.25):
        self.stats = stats
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self._stop = threading.Event()
        self._thread = None
        self._width = 0

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name='progress', daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.stream.write('\r' + ' ' * self._width + '\r')
            self.stream.flush()

    def line(self):
        s = self.stats
        seconds = max(s.seconds, 0.001)
        moved = max(s.downloaded, s.bytes)
        return '%d image%s, %d layer%s done; %s read, %s written; %s/s' % (
            s.images, '' if s.images == 1 else 's', s.layers, '' if s.layers == 1 else 's',
            human_bytes(s.downloaded), human_bytes(s.bytes), human_bytes(moved / seconds))

    def _run(self):
        while not self._stop.wait(self.interval):
            text = self.line()
            self.stream.write('\r' + text.ljust(self._width))
            self.stream.flush()
            self._width = len(text)
