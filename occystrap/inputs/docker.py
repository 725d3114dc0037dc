"""Read an image from a Docker or Podman engine (`docker://NAME[:TAG][?socket=PATH]`).

The engine exports the image as a `docker save` tarball over its API socket. The export is streamed in chunks
into a file in the run's workdir (memory stays bounded whatever the image size) and that file is read by the tar
input, so layers are parsed and verified exactly as for any tarball.
"""

import dataclasses
import logging
import os

from occystrap import streams
from occystrap.engine import EngineClient, EngineError
from occystrap.errors import CorruptImageError
from occystrap.inputs.tarball import TarballInput
from occystrap.pipeline import ImageInput, ImageRef
from occystrap.uris import Uri

LOG = logging.getLogger(__name__)


class DockerInput(ImageInput):
    """One image from an engine's image store, exported through its API."""

    def __init__(self, uri, ctx):
        super().__init__(uri, ctx)
        self.engine = EngineClient.for_uri(uri)
        self._tarballs = []     # TarballInputs over exported files, closed (and the files deleted) by close()

    def references(self):
        return [ImageRef(self.uri.name, self.uri.tag, self.uri.digest)]

    def open(self, ref):
        path = self.export(str(ref))
        tarball = TarballInput(Uri(scheme='tar', raw='tar://' + path, role='input', path=path), self.ctx)
        self._tarballs.append((tarball, path))
        refs = tarball.references()
        if len(refs) != 1:
            raise CorruptImageError('engine at %s exported %d images for %s, expected one'
                                    % (self.engine.socket_path, len(refs), ref))
        image = tarball.open(refs[0])
        # The engine names the image its own way (docker.io/library/...); keep the name the user asked for.
        return dataclasses.replace(image, name=ref.name, tag=ref.tag, source=str(self.uri))

    def export(self, reference):
        """Stream the engine's export of `reference` into a temporary file in the workdir; returns its path."""
        LOG.info('exporting %s from the engine at %s', reference, self.engine.socket_path)
        with streams.temporary_file(self.ctx.workdir, 'docker-export-', '.tar') as (out, path), \
                self.engine.export_image(reference) as stream:
            size = streams.read_all_to(stream, out)
        if size == 0:
            os.unlink(path)
            raise EngineError('engine at %s exported nothing for %s' % (self.engine.socket_path, reference))
        LOG.info('exported %s: %d bytes', reference, size)
        return path

    def close(self):
        for tarball, path in self._tarballs:
            tarball.close()
            if os.path.exists(path):
                os.unlink(path)
        self._tarballs = []
        self.engine.close()
