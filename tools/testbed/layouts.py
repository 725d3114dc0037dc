"""Deterministic OCI image layouts built from ``{path: content}`` layers: the images tests seed and read."""

import copy
import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

MEDIA_TYPES = {
    'gzip': 'application/vnd.oci.image.layer.v1.tar+gzip',
    'zstd': 'application/vnd.oci.image.layer.v1.tar+zstd',
    None: 'application/vnd.oci.image.layer.v1.tar',
}
FIXED_MTIME = 1_600_000_000


@dataclasses.dataclass
class OciImage:
    """What ``build_oci_layout`` wrote: digests are ``sha256:...`` strings, ``layer_digests`` bottom first."""
    path: Path
    manifest_digest: str
    config_digest: str
    layer_digests: list
    diff_ids: list
    manifest: dict
    config: dict


def _sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def layer_tar(files):
    """A deterministic uncompressed tar from ``{path: content}``.

    ``content`` is bytes for a regular file (0644) or a dict: ``{'type': 'file', 'data': b'', 'mode': 0o755}``,
    ``{'type': 'dir'}``, ``{'type': 'symlink', 'target': '...'}``, ``{'type': 'hardlink', 'target': '...'}``.
    Paths are stored exactly as given (so tests can write ``../escape`` or whiteouts like ``dir/.wh.name``).
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for path, content in files.items():
            spec = {'type': 'file', 'data': content} if isinstance(content, bytes) else dict(content)
            info = tarfile.TarInfo(path)
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            data = None
            if spec['type'] == 'file':
                data = spec.get('data', b'')
                info.size = len(data)
                info.mode = spec.get('mode', 0o644)
            elif spec['type'] == 'dir':
                info.type = tarfile.DIRTYPE
                info.mode = spec.get('mode', 0o755)
            elif spec['type'] in ('symlink', 'hardlink'):
                info.type = tarfile.SYMTYPE if spec['type'] == 'symlink' else tarfile.LNKTYPE
                info.linkname = spec['target']
                info.mode = spec.get('mode', 0o777 if spec['type'] == 'symlink' else 0o644)
            else:
                raise ValueError(f'unknown entry type {spec["type"]!r} for {path}')
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _compress(data, compression):
    if compression == 'gzip':
        # mtime=0 and no file name keep the gzip header, and so the digest, identical from run to run.
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == 'zstd':
        import zstandard
        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression is None:
        return data
    raise ValueError(f'unknown compression {compression!r}')


def build_oci_layout(path, layers, config_extra=None, compression='gzip', tag='latest', architecture='amd64',
                     os_name='linux'):
    """Write a deterministic single-image OCI image layout at ``path``; returns an ``OciImage``.

    ``layers`` is a list (bottom first) of ``{path: content}`` dicts as ``layer_tar`` takes. ``config_extra`` is
    merged into the top level of the image configuration (e.g. ``{'config': {'Env': ['A=1']}}``). ``compression``
    is ``'gzip'``, ``'zstd'`` or None. The result suits ``skopeo copy oci:PATH:TAG docker://...``; the same inputs
    always give the same digests.
    """
    path = Path(path)
    blobs = path / 'blobs' / 'sha256'
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data):
        digest = _sha256(data)
        (blobs / digest.split(':', 1)[1]).write_bytes(data)
        return digest

    layer_descriptors, diff_ids = [], []
    for files in layers:
        tar = layer_tar(files)
        diff_ids.append(_sha256(tar))
        blob = _compress(tar, compression)
        layer_descriptors.append({'mediaType': MEDIA_TYPES[compression], 'digest': put(blob), 'size': len(blob)})
    config = {
        'created': '2020-09-13T12:26:40Z',
        'architecture': architecture,
        'os': os_name,
        'config': {'Env': ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']},
        'rootfs': {'type': 'layers', 'diff_ids': diff_ids},
        'history': [{'created': '2020-09-13T12:26:40Z', 'created_by': f'occystrap test layer {i}'}
                    for i in range(len(layers))],
    }
    config.update(copy.deepcopy(config_extra or {}))
    config_bytes = json.dumps(config, sort_keys=True, separators=(',', ':')).encode()
    manifest = {
        'schemaVersion': 2,
        'mediaType': 'application/vnd.oci.image.manifest.v1+json',
        'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': put(config_bytes),
                   'size': len(config_bytes)},
        'layers': layer_descriptors,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(',', ':')).encode()
    manifest_digest = put(manifest_bytes)
    index = {'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
             'manifests': [{'mediaType': manifest['mediaType'], 'digest': manifest_digest,
                            'size': len(manifest_bytes),
                            'annotations': {'org.opencontainers.image.ref.name': tag}}]}
    (path / 'oci-layout').write_text(json.dumps({'imageLayoutVersion': '1.0.0'}))
    (path / 'index.json').write_text(json.dumps(index, sort_keys=True))
    return OciImage(path, manifest_digest, manifest['config']['digest'],
                    [d['digest'] for d in layer_descriptors], diff_ids, manifest, config)
