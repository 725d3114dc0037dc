"""The progress line: drawn on a terminal, absent otherwise."""

import io
import time

from occystrap.pipeline import Stats
from occystrap.progress import Progress, human_bytes


def test_human_bytes():
    assert human_bytes(999) == '999 B'
    assert human_bytes(30_100_000) == '30.1 MB'
    assert human_bytes(5 * 10 ** 12) == '5000.0 GB'


def test_progress_draws_and_clears_when_enabled():
    stats = Stats()
    out = io.StringIO()
    with Progress(stats, True, stream=out, interval=0.01):
        stats.add(images=1, layers=3, nbytes=2_000_000, downloaded=1_000_000)
        time.sleep(0.1)
    text = out.getvalue()
    assert '1 image, 3 layers done; 1.0 MB read, 2.0 MB written' in text
    assert text.endswith('\r'), 'the line is cleared at the end'


def test_progress_silent_when_disabled():
    out = io.StringIO()
    with Progress(Stats(), False, stream=out, interval=0.01):
        time.sleep(0.05)
    assert out.getvalue() == ''
