"""The search filter: report layer members whose path matches a pattern, and pass the image on unchanged.

`PathMatcher` and `find_matches` are shared with the exclude filter and the `search` command.

Paths are matched in their clean form (no leading './' or '/'): a glob with fnmatch rules, case sensitive, where
'*' also crosses '/', so '*.conf' finds every .conf file and 'etc/*' everything below etc; a regular expression
with re.search, so it matches anywhere in the path unless anchored.
"""

import dataclasses
import fnmatch
import json
import re
import sys
import threading

from occystrap import layertar, pipeline
from occystrap.errors import UsageError
from occystrap.filters import rewrite
from occystrap.main import JSON_SCHEMA
from occystrap.terminal import printable
from occystrap.uris import parse_bool

_PRINT_LOCK = threading.Lock()


class PathMatcher:
    """Matches tar member paths against globs or regular expressions (any one matching is a match)."""

    def __init__(self, patterns, regex=False):
        if isinstance(patterns, str):
            patterns = [patterns]
        patterns = [p for p in patterns if p]
        if not patterns:
            raise UsageError('no pattern to match paths against')
        self.regex = regex
        self.patterns = patterns
        compiled = []
        for pattern in patterns:
            if regex:
                try:
                    compiled.append(re.compile(pattern))
                except re.error as e:
                    raise UsageError('bad regular expression %r: %s' % (pattern, e))
            else:
                compiled.append(re.compile(fnmatch.translate(layertar.member_path(pattern))))
        self._compiled = compiled

    def matches(self, path):
        """True when the clean form of `path` matches a pattern."""
        path = layertar.member_path(path)
        if self.regex:
            return any(r.search(path) for r in self._compiled)
        return any(r.match(path) for r in self._compiled)

    def matches_tree(self, path):
        """True when `path` or one of its parent directories matches (a matched directory takes its contents)."""
        parts = layertar.member_path(path).split('/')
        return any(self.matches('/'.join(parts[:i])) for i in range(1, len(parts) + 1) if parts[0])


@dataclasses.dataclass
class Match:
    """A layer member whose path matched."""

    path: str
    type: str
    size: int


def find_matches(layer, matcher):
    """The members of a layer whose path matches, in tar order (reads the layer's headers; verifies its digest)."""
    found = []
    for info, _ in rewrite.iter_members(layer, data=False):
        path = layertar.member_path(info.name)
        if path and matcher.matches(path):
            found.append(Match(path, layertar.member_type(info), info.size))
    return found


def format_match(name, tag, diffid, path, script_friendly=False):
    """One output line: 'NAME:TAG DIFFID PATH', or 'NAME:TAG:DIFFID:PATH' for scripts (control characters escaped)."""
    if script_friendly:
        return printable('%s:%s:%s:%s' % (name, tag or '', diffid, path))
    return printable('%s:%s %s %s' % (name, tag or '', diffid, path))


def print_lines(lines, stream=None):
    """Write lines to stdout as one block, so that images searched at once do not interleave."""
    if not lines:
        return
    stream = stream or sys.stdout
    with _PRINT_LOCK:
        stream.write(''.join(line + '\n' for line in lines))
        stream.flush()


def match_record(image, diffid, match):
    """A match as the JSON object search prints: schema, reference, image, tag, diffid, path, type, size."""
    return {'schema': JSON_SCHEMA, 'reference': image.reference, 'image': image.name, 'tag': image.tag,
            'diffid': diffid, 'path': match.path, 'type': match.type, 'size': match.size}


class Search(pipeline.Filter):
    """search:pattern=GLOB[,regex=true][,script_friendly=true]

    Prints matching paths to stdout (one line each, or one JSON object per line with -O json) and passes the image
    on unchanged. Layers are materialized into the run's workdir first, so the output reuses what was read.
    """

    def __init__(self, inner, options, ctx):
        super().__init__(inner, options, ctx)
        regex = parse_bool(options.get('regex', 'false'), 'option regex of filter search')
        self.script_friendly = parse_bool(options.get('script_friendly', 'false'),
                                          'option script_friendly of filter search')
        if not options.get('pattern'):
            raise UsageError('filter search needs a pattern: search:pattern=GLOB')
        self.matcher = PathMatcher([options['pattern']], regex=regex)

    @classmethod
    def option_names(cls):
        return ('pattern', 'regex', 'script_friendly')

    def _search(self, layer):
        layer.materialize(self.ctx.workdir)
        return find_matches(layer, self.matcher)

    def apply(self, image):
        per_layer = self.ctx.map(self._search, image.layers)
        lines = []
        for layer, matches in zip(image.layers, per_layer):
            for match in matches:
                if self.ctx.settings.output_format == 'json':
                    lines.append(json.dumps(match_record(image, layer.diffid, match), sort_keys=True))
                else:
                    lines.append(format_match(image.name, image.tag, layer.diffid, match.path, self.script_friendly))
        print_lines(lines)
        return image
