"""The normalize-timestamps filter: reproducible layers whose bytes depend only on their contents.

`normalize-timestamps[:ts=EPOCH]` (default 0). Every member of every layer gets mtime EPOCH; pax atime/ctime (and
libarchive's creationtime) are removed. Numeric uid/gid stay, since they decide who owns files in a container;
uname/gname are cleared, since they are labels from the build host's user database that runtimes ignore and that
differ from host to host. Member order, modes, link targets and xattrs are kept. The config's `created` and every
history entry's `created` become the same instant. Every layer is rewritten into a new Layer without origin; the
same input always gives the same bytes, so the same diffids and config digest.
"""

import datetime
import json

from occystrap import pipeline
from occystrap.errors import UsageError
from occystrap.filters import rewrite

_TIME_PAX_KEYS = ('atime', 'ctime', 'mtime', 'LIBARCHIVE.creationtime')


def rfc3339(epoch):
    """An epoch as the UTC timestamp image configs use, e.g. '1970-01-01T00:00:00Z'."""
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


class NormalizeTimestamps(pipeline.Filter):
    """normalize-timestamps[:ts=EPOCH]"""

    def __init__(self, inner, options, ctx):
        super().__init__(inner, options, ctx)
        text = options.get('ts', '0')
        try:
            self.ts = int(text)
        except ValueError:
            raise UsageError('option ts of filter normalize-timestamps must be seconds since 1970, not %r' % text)
        if not 0 <= self.ts < 8 ** 11:
            raise UsageError('option ts of filter normalize-timestamps is out of range: %d' % self.ts)

    @classmethod
    def option_names(cls):
        return ('ts',)

    def normalize(self, info):
        """Set one member's times and owner names (the edit function of the rewrite)."""
        info.mtime = self.ts
        info.uname = ''
        info.gname = ''
        for key in _TIME_PAX_KEYS:
            info.pax_headers.pop(key, None)
        return info

    def apply(self, image):
        layers = self.ctx.map(lambda layer: rewrite.rewrite_layer(layer, self.normalize, self.ctx.workdir),
                              image.layers, cost=pipeline.layer_cost)
        config = json.loads(image.config_bytes)
        created = rfc3339(self.ts)
        config['created'] = created
        for entry in config.get('history') or []:
            if isinstance(entry, dict):
                entry['created'] = created
        return image.replace(layers=layers, config=config)
