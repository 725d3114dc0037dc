"""Helpers that several test modules share: digests, pictures of trees, images as inputs make them, tarballs.

The services and the images they serve (registries, Podman, skopeo, ``build_oci_layout``) are the test bed's, in
``tools/testbed`` (named for tests by ``tests/services.py``); what is here is only for tests. A test module imports
helpers from here, never from another test module.
"""

import hashlib
import http.server
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading

from occystrap.model import Blob, Image, Layer
from tools.loopback import LoopbackServer


def run_occystrap(*args, check=True, env=None, timeout=240):
    """Run the command as a user would, in an environment without proxy or OCCYSTRAP_ variables (plus `env`);
    with `check`, a non-zero exit fails the test showing stderr. Returns the CompletedProcess (text)."""
    clean = {k: v for k, v in os.environ.items() if not k.lower().endswith('_proxy') and not k.startswith('OCCYSTRAP_')}
    clean.update(env or {})
    result = subprocess.run([sys.executable, '-m', 'occystrap', *args], capture_output=True, text=True, env=clean,
                            stdin=subprocess.DEVNULL, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def sha256(data):
    """``sha256:<hex>`` of bytes."""
    return 'sha256:' + hashlib.sha256(data).hexdigest()


# --- trees ------------------------------------------------------------------------------------------------------------

def tree_digests(path):
    """{relative path: sha256 hex} of every file under path, hidden temporary files included."""
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, 'rb') as f:
                found[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return found


def snapshot(path):
    """Every entry below path with its type, content or link target, and mode: a comparable picture of a tree."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ('symlink', os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ('dir', stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                with open(full, 'rb') as f:
                    result[rel] = ('file', stat.S_IMODE(st.st_mode), f.read())
            else:
                result[rel] = ('other', st.st_mode, st.st_rdev)
    return result


# --- sandboxes of the property tests -------------------------------------------------------------------------


def make_sentinels(outside):
    os.makedirs(os.path.join(outside, 'dir'))
    with open(os.path.join(outside, 'file'), 'wb') as f:
        f.write(b'sentinel\n')
    with open(os.path.join(outside, 'dir', 'inner'), 'wb') as f:
        f.write(b'inner\n')
    os.symlink('file', os.path.join(outside, 'link'))
    os.chmod(os.path.join(outside, 'file'), 0o640)


def picture(top, skip):
    """Every entry below `top` except the `skip` subtree: type, mode, size, content or link target, inode, mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip]
        for name in dirnames + filenames + ['.']:
            path = os.path.normpath(os.path.join(dirpath, name))
            st_ = os.lstat(path)
            detail = None
            if stat.S_ISLNK(st_.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                with open(path, 'rb') as f:
                    detail = f.read()
            found[path] = (st_.st_mode, st_.st_size, st_.st_nlink, st_.st_ino, st_.st_mtime_ns, st_.st_uid, detail)
    return found


def assert_contained(dest, outside_inodes):
    """Nothing in dest shares an inode with a file outside; no relative symlink climbs above dest."""
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            assert (st_.st_dev, st_.st_ino) not in outside_inodes, path
            if stat.S_ISLNK(st_.st_mode):
                target = os.readlink(path)
                if not target.startswith('/'):
                    resolved = os.path.normpath(os.path.join(dirpath, target))
                    assert resolved == dest or resolved.startswith(dest + os.sep), (path, target)


# The destination sits this deep below the directory whose picture is compared, deeper than any generated name can
# climb, so that even an extractor bug that let `..` through would write only inside the picture (and fail the test),
# never elsewhere on the machine running the tests.
DEPTH = 7


def sandbox(top):
    """Sentinel trees and an empty destination deep under `top`; returns (outside, dest, picture before, inodes).

    `outside` (the tree absolute link targets aim at) is the destination's sibling; `top/outside` is another.
    """
    chain = os.path.join(top, *['up%d' % i for i in range(DEPTH)])
    outside, dest = os.path.join(chain, 'outside'), os.path.join(chain, 'dest')
    make_sentinels(outside)
    make_sentinels(os.path.join(top, 'outside'))
    os.mkdir(dest)
    before = picture(top, dest)
    inodes = {(os.lstat(p).st_dev, os.lstat(p).st_ino) for p in before if not os.path.isdir(p)}
    return outside, dest, before, inodes


# --- layers and images ------------------------------------------------------------------------------------------------

# Layers exercising whiteouts: plain, opaque, a file replaced by a directory, symlinks and hard links.
WHITEOUT_LAYERS = [
    {'etc': {'type': 'dir'}, 'etc/a': b'a\n', 'etc/b': b'b\n', 'opt': {'type': 'dir'}, 'opt/old': b'old\n',
     'opt/sub': {'type': 'dir'}, 'opt/sub/deep': b'deep\n', 'var': {'type': 'dir'}, 'var/x': b'x\n',
     'lnk': {'type': 'symlink', 'target': 'etc/a'}, 'hard': {'type': 'hardlink', 'target': 'etc/b'}},
    {'etc/.wh.a': b'', 'opt/.wh..wh..opq': b'', 'opt/new': b'new\n', 'var/x': {'type': 'dir'},
     'var/x/inside': b'inside\n', 'abs': {'type': 'symlink', 'target': '/etc/b'}},
    {'.wh.lnk': b'', 'etc/c': b'c\n', 'opt/new': b'newer\n', '.wh.var': b'', 'var': {'type': 'dir'},
     'var/fresh': b'fresh\n'},
]

# Two small layers: a directory with a file, then an executable and a symlink to it.
TARBALL_LAYERS = [
    {'etc': {'type': 'dir'}, 'etc/hello.txt': b'hello from a tarball\n'},
    {'usr/bin/tool': {'type': 'file', 'data': b'#!/bin/sh\necho tool\n', 'mode': 0o755},
     'usr/bin/tool-link': {'type': 'symlink', 'target': 'tool'}},
]


def image_from_layout(oci, name='test/image', tag='latest', counter=None):
    """An Image as an input would make it: config bytes plus lazy layers whose origin is the layout's blob."""
    blobs = oci.path / 'blobs' / 'sha256'
    config_bytes = (blobs / oci.config_digest.split(':')[1]).read_bytes()
    layers = []
    for descriptor, diffid in zip(oci.manifest['layers'], oci.diff_ids):
        path = blobs / descriptor['digest'].split(':')[1]

        def opener(path=path, digest=descriptor['digest']):
            if counter is not None:
                counter.hit(digest)
            return open(path, 'rb')
        layers.append(Layer(diffid=diffid, origin=Blob(descriptor['digest'], descriptor['mediaType'],
                                                       descriptor['size'], opener)))
    return Image(name=name, tag=tag, config_bytes=config_bytes, layers=layers, source=str(oci.path))


def umoci_rootfs(oci, tmp_path):
    """The root filesystem umoci unpacks from an OCI layout (tag latest): an independent reference."""
    bundle = tmp_path / 'umoci-bundle'
    result = subprocess.run(['umoci', 'unpack', '--image', '%s:latest' % oci.path, str(bundle)],
                            capture_output=True, text=True)
    assert result.returncode == 0, 'umoci unpack failed: %s' % result.stderr
    return bundle / 'rootfs'


# --- docker save tarballs ---------------------------------------------------------------------------------------------

def write_tar(path, members):
    """A tar of `members` in order: name -> bytes, or ('symlink', target). Returns path."""
    with tarfile.open(path, 'w', format=tarfile.PAX_FORMAT) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


def image_config(layer_tars, architecture='amd64', commands=None):
    """Config bytes for uncompressed layer tars, with one history entry per layer and one empty-layer entry."""
    commands = commands or ['step %d' % i for i in range(len(layer_tars))]
    history = [{'created_by': 'ENV A=1', 'empty_layer': True}]
    history += [{'created_by': command} for command in commands]
    config = {'architecture': architecture, 'os': 'linux', 'config': {'Env': ['A=1']},
              'rootfs': {'type': 'layers', 'diff_ids': [sha256(t) for t in layer_tars]}, 'history': history}
    return json.dumps(config, sort_keys=True).encode()


def legacy_members(images):
    """Members of a legacy docker save tarball for [(repo_tags, layer_tars)]: <id>/layer.tar, <hex>.json."""
    members, manifest, repositories = {}, [], {}
    for tags, tars in images:
        config = image_config(tars)
        config_name = sha256(config).split(':')[1] + '.json'
        members[config_name] = config
        paths = []
        for tar in tars:
            layer_id = hashlib.sha256(b'v1id' + tar).hexdigest()
            members[layer_id + '/VERSION'] = b'1.0'
            members[layer_id + '/json'] = json.dumps({'id': layer_id}).encode()
            members[layer_id + '/layer.tar'] = tar
            paths.append(layer_id + '/layer.tar')
        manifest.append({'Config': config_name, 'RepoTags': tags, 'Layers': paths})
        for tag in tags or []:
            name, _, version = tag.rpartition(':')
            repositories.setdefault(name, {})[version] = paths[-1].split('/')[0]
    members['manifest.json'] = json.dumps(manifest).encode()
    members['repositories'] = json.dumps(repositories).encode()
    return members


def tar_directory(directory, path):
    """Tar an OCI layout directory (what `tar -C DIR -cf PATH .` would give)."""
    with tarfile.open(path, 'w') as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, name), arcname=name)
    return path


# --- HTTP -------------------------------------------------------------------------------------------------------------

class ScriptedServer:
    """A loopback HTTP/1.1 server answering each request with the next (status, headers, body) of a script."""

    def __init__(self, script):
        self.script = list(script)
        self.seen = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def log_message(self, *args):
                pass

            def _answer(self):
                server.seen.append((self.command, self.path, dict(self.headers)))
                status, headers, body = server.script.pop(0) if server.script else (200, {}, b'{}')
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header('Content-Length', str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_PUT = _answer

        self.httpd = LoopbackServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def host(self):
        return '127.0.0.1:%d' % self.httpd.server_address[1]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def multi_platform_layout(path, platforms=('amd64', 'arm64'), attestation=True):
    """An OCI layout holding an index of one small image per architecture (built with the test bed's
    build_oci_layout, layers different per platform) plus, with `attestation`, an attestation manifest with the
    'unknown/unknown' platform as BuildKit writes one. Returns (path, index bytes)."""
    from tests.services import build_oci_layout
    entries = []
    for number, architecture in enumerate(platforms):
        image = build_oci_layout(path, [{'arch.txt': ('%s %d\n' % (architecture, number)).encode()},
                                        {'common.txt': b'shared by every platform\n'}], architecture=architecture)
        raw = json.dumps(image.manifest, sort_keys=True, separators=(',', ':')).encode()
        platform = {'architecture': architecture, 'os': 'linux'}
        if architecture == 'arm64':
            platform['variant'] = 'v8'
        entries.append({'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': image.manifest_digest,
                        'size': len(raw), 'platform': platform})
    blobs = os.path.join(str(path), 'blobs', 'sha256')

    def put(data):
        digest = sha256(data)
        with open(os.path.join(blobs, digest.split(':', 1)[1]), 'wb') as f:
            f.write(data)
        return digest

    if attestation:
        statement = b'{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document"}'
        config = b'{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
            % sha256(statement).encode()
        manifest = json.dumps({
            'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.manifest.v1+json',
            'config': {'mediaType': 'application/vnd.oci.image.config.v1+json', 'digest': put(config),
                       'size': len(config)},
            'layers': [{'mediaType': 'application/vnd.in-toto+json', 'digest': put(statement), 'size': len(statement),
                        'annotations': {'in-toto.io/predicate-type': 'https://spdx.dev/Document'}}],
        }, sort_keys=True, separators=(',', ':')).encode()
        entries.append({'mediaType': 'application/vnd.oci.image.manifest.v1+json', 'digest': put(manifest),
                        'size': len(manifest), 'platform': {'architecture': 'unknown', 'os': 'unknown'},
                        'annotations': {'vnd.docker.reference.digest': entries[0]['digest'],
                                        'vnd.docker.reference.type': 'attestation-manifest'}})
    index = json.dumps({'schemaVersion': 2, 'mediaType': 'application/vnd.oci.image.index.v1+json',
                        'manifests': entries}, sort_keys=True, separators=(',', ':')).encode()
    index_digest = put(index)
    with open(os.path.join(str(path), 'index.json'), 'w') as f:
        top = {'mediaType': 'application/vnd.oci.image.index.v1+json', 'digest': index_digest, 'size': len(index),
               'annotations': {'org.opencontainers.image.ref.name': 'latest'}}
        json.dump({'schemaVersion': 2, 'manifests': [top]}, f)
    return path, index


# --- artifacts pushed with plain HTTP requests (signatures and referrers the tests make, not our code) -------------

OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
EMPTY_TYPE = 'application/vnd.oci.empty.v1+json'


def http_push_blob(client, name, data):
    """Upload a blob with a POST and a monolithic PUT (an httpx.Client aimed at the registry); its digest."""
    digest = sha256(data)
    started = client.post('/v2/%s/blobs/uploads/' % name)
    assert started.status_code == 202, started.text
    location = started.headers['Location']
    done = client.put(location + ('&' if '?' in location else '?') + 'digest=' + digest, content=data,
                      headers={'Content-Type': 'application/octet-stream'})
    assert done.status_code == 201, done.text
    return digest


def http_put_manifest(client, name, reference, raw, media_type=OCI_MANIFEST):
    """PUT manifest bytes under a tag or digest; the answer (its status checked)."""
    answer = client.put('/v2/%s/manifests/%s' % (name, reference), content=raw, headers={'Content-Type': media_type})
    assert answer.status_code == 201, answer.text
    return answer


def http_push_artifact(client, name, payload, layer_type, subject=None, artifact_type=None, config=None,
                       config_type=EMPTY_TYPE, annotations=None, reference=None):
    """An OCI manifest of one layer (`payload`) pushed with plain HTTP: the empty config unless `config` is given,
    an optional `subject` (a descriptor dict) and `artifactType`, under `reference` (default its digest).

    Returns (digest, raw manifest bytes, the PUT's answer)."""
    config = b'{}' if config is None else config
    document = {'schemaVersion': 2, 'mediaType': OCI_MANIFEST}
    if artifact_type:
        document['artifactType'] = artifact_type
    document['config'] = {'mediaType': config_type, 'digest': http_push_blob(client, name, config),
                          'size': len(config)}
    document['layers'] = [{'mediaType': layer_type, 'digest': http_push_blob(client, name, payload),
                           'size': len(payload)}]
    if subject is not None:
        document['subject'] = subject
    if annotations:
        document['annotations'] = annotations
    raw = json.dumps(document, separators=(',', ':')).encode()
    answer = http_put_manifest(client, name, reference or sha256(raw), raw)
    return sha256(raw), raw, answer
