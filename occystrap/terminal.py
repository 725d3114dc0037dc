"""Text for people's terminals: untrusted names, paths and messages with their control characters made visible.

Image names, tags, file names inside layers and registry messages come from outside. Printed raw, an ESC sequence
in one could move the cursor, rewrite earlier lines, retitle the window or hide text; a CR could overwrite the line
it is on; a Unicode bidi override could show a name reversed. `printable` is the one place that escapes them, and
every site that prints such text for a human goes through it. JSON output needs nothing: json.dumps (ensure_ascii,
its default) writes every control and non-ASCII character as a \\u escape.
"""

import logging
import re

# C0 controls, DEL, C1 controls, lone surrogates (undecodable bytes of a name, kept by surrogateescape), the bidi
# embeddings, overrides, isolates and marks, and the Unicode line and paragraph separators.
_UNSAFE = re.compile('[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]')


def _escape(match):
    code = ord(match.group())
    if 0xdc80 <= code <= 0xdcff:
        return '\\x%02x' % (code - 0xdc00)     # surrogateescape's form of one undecodable byte: show that byte
    if code < 0x100:
        return '\\x%02x' % code
    return '\\u%04x' % code


def printable(text):
    """`text` (any object, as str()) with every control character shown as a visible escape such as \\x1b.

    Ordinary text, including non-ASCII letters, comes back unchanged; the result is safe to write to a terminal
    and encodes to UTF-8 whatever the input held.
    """
    text = str(text)
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape, text)


class PrintableFormatter(logging.Formatter):
    """A logging formatter whose message lines pass through printable (a traceback under --debug is left as is)."""

    def formatMessage(self, record):
        return printable(super().formatMessage(record))
