"""Load images into a Docker or Podman engine (`docker://NAME:TAG[?socket=PATH]`).

Each image is written by the tar output as a `docker save` tarball tagged with the destination name, into a
private directory in the run's workdir, and that file is streamed to the engine's load endpoint. The directory is
removed whether or not the load worked, and the engine only ever sees a complete tarball, so a failed run leaves
nothing behind. Configs and layers go through unchanged, so the engine's image ID is the source's config digest.
"""

import dataclasses
import logging
import shutil
import tempfile

from occystrap import uris
from occystrap.engine import EngineClient
from occystrap.errors import OccystrapError, UsageError
from occystrap.outputs.tarball import TarballOutput
from occystrap.pipeline import ImageOutput
from occystrap.uris import Uri

LOG = logging.getLogger(__name__)


class DockerOutput(ImageOutput):
    """Images into an engine's image store, loaded through its API."""

    def __init__(self, uri, ctx, **run):
        super().__init__(uri, ctx, **run)
        if uri.digest:
            raise UsageError('%s names a digest; an engine loads images under a tag: docker://NAME:TAG' % uri)
        self.engine = EngineClient.for_uri(uri)
        # Fail before anything is downloaded when no engine answers.
        self.engine.ping()
        self.loaded = []        # (destination reference, names the engine reported)

    def destination(self, image):
        """(name, tag) the image is loaded as; a multi-image source puts each image's last name component
        under the destination name, keeping its own tag."""
        if not self.multi_image:
            name, tag = self.uri.name, self.uri.tag
        else:
            leaf = (image.name or '').rstrip('/').rsplit('/', 1)[-1]
            if not leaf:
                raise OccystrapError('image from %s has no name to load under %s' % (image.source or '?', self.uri))
            name, tag = '%s/%s' % (self.uri.name, leaf), image.tag or self.uri.tag
        # Checked before the engine sees them: a multi-image source names them.
        what = 'cannot load %r under %s' % (image.reference, self.uri)
        return uris.validate_repository(name, what, host=True), uris.validate_tag(tag, what)

    def write(self, image):
        name, tag = self.destination(image)
        tagged = dataclasses.replace(image, name=name, tag=tag, registry=None)   # the engine's name, not the source's
        staging = tempfile.mkdtemp(prefix='docker-load-', dir=self.ctx.workdir)
        try:
            path = '%s/image.tar' % staging
            tarball = TarballOutput(Uri(scheme='tar', raw='tar://' + path, role='output', path=path), self.ctx)
            try:
                tarball.write(tagged)
                tarball.finalize()
            except BaseException:
                tarball.abort()
                raise
            LOG.info('loading %s:%s into the engine at %s', name, tag, self.engine.socket_path)
            names = self.engine.load_image(path)
            LOG.info('engine loaded %s', ', '.join(names) or 'an image')
            self.loaded.append(('%s:%s' % (name, tag), names))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def finalize(self):
        self.engine.close()

    def abort(self):
        # Every write cleans up after itself; an image the engine already loaded stays, as with docker load.
        self.engine.close()
