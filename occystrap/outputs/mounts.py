"""Write one image as layers extracted side by side, ready for an overlay mount (`mounts:///PATH`).

```
PATH/layers/000-<diffid-hex>/    each layer's own files (bottom first), no layer applied onto another
PATH/layers/empty/               an empty bottom layer, so a read-only overlay always has the two lowerdirs it needs
PATH/lowerdir                    the overlay lowerdir option value: layer directories top first, ':'-separated,
                                 relative to PATH
PATH/mount.sh                    mount.sh TARGET [UPPERDIR WORKDIR]: mounts the overlay (read-only without UPPERDIR);
                                 it finds the layers beside itself, so PATH may be moved (but not to a path with
                                 ',' or ':', which overlay options cannot carry)
PATH/config.json                 the image config, the source's exact bytes
PATH/manifest.json               {reference, config digest, layers [{diffid, path}], whiteouts, lowerdir}
```

Whiteouts: overlayfs marks a deleted file with a 0/0 character device and an opaque directory with the
`trusted.overlay.opaque` xattr, while OCI layers use `.wh.NAME` and `.wh..wh..opq` files. Running as root, the
whiteouts are converted to the overlayfs form so mount.sh gives the image's real root filesystem
(manifest.json says `"whiteouts": "overlay"`). Without root neither can be made, so the `.wh.` files are kept as
they are (`"whiteouts": "oci"`) and a warning says the layers are not mountable as they stand.

Layers are extracted in parallel (-j), each streamed straight from its source and verified, into a hidden
directory beside PATH that is renamed to PATH when complete (mode 0700: the layers may hold set-id files).
PATH must not exist or be an empty directory.
"""

import json
import os
import re
import shlex

from occystrap import extract, oci
from occystrap.errors import CorruptImageError
from occystrap.outputs.directory import image_reference
from occystrap.outputs.staging import StagedImageOutput
from occystrap.terminal import printable

EMPTY_LAYER = 'empty'

# Every value from the image is a single-quoted shell word (shlex.quote) in an assignment, never part of a comment
# or a double-quoted string, so a name holding a newline, quote, $() or backquote stays data.
MOUNT_SCRIPT = '''#!/bin/sh
# Mount the layers of the image named below as one overlay filesystem (needs root).
# Usage: mount.sh TARGET [UPPERDIR WORKDIR]    read-only unless UPPERDIR and WORKDIR are given.
# Whiteouts in these layers are in %(whiteouts)s form; see manifest.json.
set -eu
# shellcheck disable=SC2016  # the name is a literal: any $ or ` in it is data
image=%(reference)s
if [ $# -ne 1 ] && [ $# -ne 3 ]; then
    echo "usage: $0 TARGET [UPPERDIR WORKDIR] (mounts $image)" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
lower=%(lower)s
if [ $# -eq 3 ]; then
    exec mount -t overlay overlay -o "lowerdir=$lower,upperdir=$2,workdir=$3" "$1"
fi
exec mount -t overlay overlay -o "lowerdir=$lower" "$1"
'''


# What each component of a layer directory name may hold to stand in an overlay lowerdir option: ':' separates its
# entries, ',' its options, '\\' escapes, so none of them (nor '..', nor shell syntax) may come from a digest.
LOWERDIR_PART_RE = re.compile(r'^[A-Za-z0-9_-][A-Za-z0-9._-]*$')


def layer_directory(index, diffid):
    """The directory of layer `index`, named by its diffid (checked against the digest grammar: it becomes a path)."""
    return 'layers/%03d-%s' % (index, oci.digest_hex(diffid, 'layer %d, which names a layer directory,' % index))


class MountsOutput(StagedImageOutput):
    """One image's layers, each extracted into its own directory, with what an overlay mount needs."""

    scheme = 'mounts'

    def write(self, image):
        staged = self.stage(image)
        whiteouts = extract.OVERLAY if extract.is_root() else extract.KEEP
        if whiteouts == extract.KEEP:
            self.ctx.warn('%s: not running as root, so whiteouts stay as .wh. files and an overlay mount of %s would '
                          'show deleted files' % (image.reference, self.path))
        os.makedirs(os.path.join(staged, 'layers', EMPTY_LAYER))
        names = [layer_directory(i, layer.diffid) for i, layer in enumerate(image.layers)]
        for name, layer in zip(names, image.layers):
            if not all(LOWERDIR_PART_RE.match(part) for part in name.split('/')):
                raise CorruptImageError('%s has a layer diffid %r that cannot name a layer directory'
                                        % (image.reference, layer.diffid))
        allow_devices = self.ctx.settings.allow_devices

        def one(item):
            index, layer = item
            target = os.path.join(staged, names[index])
            os.mkdir(target, 0o755)
            stream = layer.open()
            try:
                summary = extract.extract_layer(stream, target, whiteouts=whiteouts, allow_devices=allow_devices,
                                                warn=self.ctx.warn, budget=extract.run_budget(self.ctx),
                                                what='%s layer %d (%s)' % (image.reference, index, layer.diffid))
            finally:
                stream.close()
            self.ctx.stats.add(nbytes=summary.bytes, layers_done=1)

        self.ctx.map(one, list(enumerate(image.layers)))
        lower = list(reversed(names)) + ['layers/' + EMPTY_LAYER]
        self.put('config.json', image.config_bytes)
        self.put('lowerdir', (':'.join(lower) + '\n').encode())
        self.put('manifest.json', json.dumps({
            'reference': image_reference(image),
            'config': {'path': 'config.json', 'digest': image.config_digest},
            'layers': [{'diffid': layer.diffid, 'path': name} for layer, name in zip(image.layers, names)],
            'whiteouts': 'overlay' if whiteouts == extract.OVERLAY else 'oci',
            'lowerdir': ':'.join(lower),
        }, indent=2).encode())
        script = MOUNT_SCRIPT % {'reference': shlex.quote(printable(image_reference(image))), 'whiteouts': whiteouts,
                                 'lower': ':'.join('"$here"/' + shlex.quote(d) for d in lower)}
        self.put('mount.sh', script.encode(), mode=0o755)

    def put(self, name, data, mode=0o644):
        path = os.path.join(self.staged.path, name)
        with open(path, 'wb') as f:
            f.write(data)
        os.chmod(path, mode)
