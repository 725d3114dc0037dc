"""The progress display's pieces: sizes, lines, fitting, redraw in place, logging above it, per-image handles."""

import io
import logging
import re
import threading
import time

from occystrap.pipeline import RunContext, Stats, current_image
from occystrap.progress import Progress, Speed, fit, human_bytes, human_duration, image_line, overall_line
from occystrap.settings import Settings


def test_human_bytes():
    assert human_bytes(999) == '999 B'
    assert human_bytes(30_100_000) == '30.1 MB'
    assert human_bytes(5 * 10 ** 12) == '5000.0 GB'


def test_human_duration():
    assert human_duration(7.9) == '0:07'
    assert human_duration(754) == '12:34'
    assert human_duration(3723) == '1:02:03'


def test_speed_is_over_the_recent_window_not_the_whole_run():
    speed = Speed(window=2)
    speed.update(0, 0)
    speed.update(1, 10_000_000)        # a fast start...
    for t in range(2, 8):
        current = speed.update(t, 10_000_000 + (t - 1) * 1000)   # ...then a crawl
    assert current < 10_000, current


def image_with(stats, name, layers=2, expected=3_000_000, downloaded=1_000_000):
    handle = stats.start_image(name)
    handle.layers = layers
    handle.expected = expected
    handle.count_download(downloaded)
    return handle


def test_image_line_gives_layers_bytes_speed_and_eta():
    handle = image_with(Stats(), 'org/app:v1')
    handle.layers_done = 1
    assert image_line(handle, 500_000) == 'org/app:v1  1/2 layers  1.0 MB/3.0 MB  500.0 KB/s  ETA 0:04'
    assert image_line(handle, 0).endswith('ETA --')


def test_image_line_escapes_control_characters_in_names():
    handle = image_with(Stats(), 'evil\x1b]0;pwned\x07\x1b[2J:v1')
    line = image_line(handle, 0)
    assert '\x1b' not in line and '\x07' not in line
    assert line.startswith('evil\\x1b]0;pwned\\x07\\x1b[2J:v1  ')


def test_a_long_name_loses_its_start_and_the_figures_stay():
    handle = image_with(Stats(), 'registry.example/' + 'x' * 200 + '/app:v1')
    line = image_line(handle, 1000, width=80)
    assert len(line) == 79 and line.startswith('~') and '/app:v1  0/2 layers  ' in line and line.endswith('ETA 33:20')


def test_fit_never_fills_the_last_column():
    assert fit('abc', 10) == 'abc'
    assert fit('a' * 30, 10) == 'a' * 8 + '~'
    assert len(fit('a' * 30, 10)) == 9


def test_overall_line_counts_downloads_uploads_and_writes():
    stats = Stats()
    stats.planned = 4
    handle = image_with(stats, 'a:v1', downloaded=2_000_000)
    handle.count_upload(1_500_000)
    stats.add(images=1, layers=2, nbytes=3_000_000)
    line = overall_line(stats, 0)
    assert line.startswith('total: 1/4 images, 2 layers, 2.0 MB down, 1.5 MB up, 3.0 MB written, 0 B/s, 0:0')
    handle.layers_done = 1
    assert overall_line(stats, 0, [handle]).startswith('total: 1/4 images, 3 layers, '), 'in-flight layers count'


def draws(text):
    """The screens drawn to a stream: the text between clears (cursor up, clear below)."""
    return [part for part in re.split(r'\r(?:\x1b\[\d+A)?\x1b\[J', text) if part]


def test_redraws_in_place_a_line_per_image_and_clears_at_the_end():
    stats = Stats()
    stats.planned = 2
    a = image_with(stats, 'a:v1')
    image_with(stats, 'b:v1')
    out = io.StringIO()
    with Progress(stats, True, stream=out, size=(80, 24)):
        time.sleep(0.35)
        stats.finish_image(a, True)
        time.sleep(0.35)
    text = out.getvalue()
    screens = draws(text)
    assert len(screens) >= 2
    assert screens[0].startswith('\x1b[2Ka:v1  0/2 layers') and '\n\x1b[2Kb:v1  ' in screens[0]
    assert screens[0].count('\n') == 2, 'two images and the overall line'
    assert screens[-1].startswith('\x1b[2Kb:v1  ') and screens[-1].count('\n') == 1, 'a finished image goes'
    assert '\r\x1b[2A\x1b[J' in text, 'the three lines are cleared from their first'
    assert text.endswith('\r\x1b[1A\x1b[J'), 'the display is gone before the summary'
    assert all(not s.endswith('\n') for s in screens), 'no newline after the last line (no scrolling)'


def test_never_more_lines_than_the_terminal_has_room_for():
    stats = Stats()
    for i in range(10):
        image_with(stats, 'img%d:v1' % i)
    out = io.StringIO()
    with Progress(stats, True, stream=out, size=(40, 5)):
        time.sleep(0.25)
    screen = draws(out.getvalue())[0]
    lines = screen.split('\n')
    assert len(lines) == 4 and lines[-1].startswith('\x1b[2Ktotal: ')
    assert all(len(line) - len('\x1b[2K') <= 39 for line in lines)


def test_at_most_ten_redraws_a_second():
    assert Progress(Stats(), True, interval=0.01).interval == 0.1


def test_log_lines_go_above_the_display_never_into_it():
    stats = Stats()
    image_with(stats, 'a:v1')
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with Progress(stats, True, stream=out, size=(80, 24)):
            time.sleep(0.25)
            logging.getLogger('occystrap').warning('a warning')
            time.sleep(0.25)
        assert handler.stream is out, 'the handler gets its stream back'
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    before, after = text.split('a warning\n')
    assert re.search(r'\r\x1b\[1A\x1b\[J$', before), 'the display is cleared right before the log line'
    assert after.startswith('\x1b[2Ka:v1  '), 'and drawn again below it'


def test_silent_when_disabled():
    out = io.StringIO()
    with Progress(Stats(), False, stream=out, interval=0.01):
        time.sleep(0.05)
    assert out.getvalue() == ''


def test_workers_count_for_the_image_that_asked():
    """gather carries the current image into its worker threads; finished images leave the display."""
    ctx = RunContext(Settings(parallel=4))
    handle = ctx.stats.start_image('a:v1')
    seen = []

    def work(n):
        seen.append(current_image())
        current_image().count_download(n)
        ctx.stats.add(nbytes=n, layers_done=1)
        return n

    done = threading.Event()

    def image_thread():
        from occystrap import pipeline
        pipeline._current.image = handle
        try:
            ctx.map(work, [1, 2, 3, 4])
        finally:
            pipeline._current.image = None
            done.set()

    thread = threading.Thread(target=image_thread)
    thread.start()
    thread.join(30)
    assert done.is_set()
    assert seen == [handle] * 4
    assert (handle.downloaded, handle.written, handle.layers_done) == (10, 10, 4)
    assert ctx.stats.downloaded == 10 and ctx.stats.bytes == 10
    assert current_image() is None, 'the calling thread is not an image thread'
    assert ctx.stats.in_flight() == [handle]
    ctx.stats.finish_image(handle, True)
    assert ctx.stats.in_flight() == []
