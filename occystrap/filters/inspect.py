"""The inspect filter: append one JSON line per layer to a file and pass the image on unchanged.

`inspect:file=PATH`. Each line is an object with image, tag, diffid, size (uncompressed bytes), created_by and
digest (the compressed blob the layer came from, or null once a filter rewrote it). An image's lines are appended
in one write under a lock (a thread lock and an flock, so concurrent images and runs do not interleave) and
flushed. Finding the size of a compressed layer means reading it: such layers are materialized into the run's
workdir, where the output can reuse them.
"""

import fcntl
import json
import os
import threading

from occystrap import pipeline
from occystrap.errors import OccystrapError, UsageError

_LOCK = threading.Lock()


def known_size(layer):
    """A layer's uncompressed size when it can be told without reading the layer, else None."""
    if layer.path is not None:
        return layer.size
    if layer.origin is not None and layer.origin.compression == 'none' and layer.origin.size is not None:
        return layer.origin.size
    return None


def layer_record(image, layer, size):
    """The JSON object inspect writes for one layer."""
    return {'image': image.name, 'tag': image.tag, 'diffid': layer.diffid, 'size': size,
            'created_by': layer.created_by, 'digest': layer.origin.digest if layer.origin is not None else None}


class Inspect(pipeline.Filter):
    """inspect:file=PATH"""

    def __init__(self, inner, options, ctx):
        super().__init__(inner, options, ctx)
        if not options.get('file'):
            raise UsageError('filter inspect needs a file: inspect:file=PATH')
        self.path = os.path.abspath(os.path.expanduser(options['file']))

    @classmethod
    def option_names(cls):
        return ('file',)

    def _size(self, layer):
        size = known_size(layer)
        if size is None:
            layer.materialize(self.ctx.workdir)
            size = layer.size
        return size

    def apply(self, image):
        sizes = self.ctx.map(self._size, image.layers)
        text = ''.join(json.dumps(layer_record(image, layer, size), sort_keys=True) + '\n'
                       for layer, size in zip(image.layers, sizes))
        try:
            with _LOCK, open(self.path, 'a', encoding='utf-8') as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    f.write(text)
                    f.flush()
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        except OSError as e:
            raise OccystrapError('cannot append to inspect file %s: %s' % (self.path, e.strerror or e))
        return image
