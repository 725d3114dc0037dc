"""The benchmark's environment: registries, the Quay stand-in, the delay proxies, and the seeded test images.

Used by tools/benchmark.sh; two subcommands:

``up --state FILE --cache DIR --work DIR [--registry HOST:PORT] [--tls] [--latency MS] [--bandwidth MBIT]``
    Finds or starts the source registry, always starts a second, empty registry as the push target (a push to
    another repository of the same registry would be a cross-repository mount and move no bytes), starts the
    Quay API stand-in over the source registry and, with --latency or --bandwidth, one delay proxy in front of
    each of the three so that clients (pulls, pushes and API calls alike) see the long link while seeding and
    the stand-in's own reads stay direct. The source registry is, in order: --registry; with --tls a TLS
    registry of our own; a registry already answering at localhost:5000; else one of our own (docker-registry
    from its Debian package) on a free loopback port with its storage in CACHE/registry, so seeded images
    survive between runs. Writes the addresses to the state file (JSON, written when everything answers), then
    waits for SIGTERM or SIGINT and stops everything it started. Registries it starts die with it.

``seed --state FILE --cache DIR [--scale F] [--prefix P] [--org ORG] [--mirror-repos N] [--curve-repos LIST]
[--curve-only] --out FILE``
    Generates the benchmark images with tools/imagegen.py (cached per scale under CACHE/images) and copies each
    into the source registry with skopeo when the registry does not already hold exactly that manifest. Writes
    the images file (JSON) that tools/bench_plan.py reads: names and compressed sizes. The mirroring fleet (N
    small repositories, default 100, under PREFIX/mirror-N/) also gets a skopeo sync YAML naming exactly those
    repositories, beside the images file (skopeo-sync.yaml), for the skopeo cells of bulk-mirror and resync.
    --curve-repos 100,400 also seeds the memory curve's fleets: N small repositories under memcurve-N/ (no prefix:
    the namespace is the Quay stand-in's organisation too), the mirroring fleet's images at any scale;
    --curve-only seeds nothing else. skopeo seeds about ten of these small images a second here (8 at once),
    so 400 take about 40 s, once per cache: later runs find them by a HEAD each.

Registries, TLS material, ports and skopeo come from the test bed (tools/testbed), which the test suite uses too.
The pure helpers (registry_config, expected_images, image_bytes, parse_hostport, ...) are unit tested.
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.testbed import (Registry, client_context, probe_registry, registry_config,  # noqa: E402,F401
                           skopeo_copy, write_tls_material)

DEFAULT_REGISTRY = 'localhost:5000'
MANIFEST_ACCEPT = ', '.join((
    'application/vnd.oci.image.manifest.v1+json',
    'application/vnd.docker.distribution.manifest.v2+json',
    'application/vnd.oci.image.index.v1+json',
    'application/vnd.docker.distribution.manifest.list.v2+json',
))

# What the benchmark seeds: (key, imagegen model, repository, count, scale factor relative to --scale).
# The Quay organisation only serves `info`, which reads manifests and configs, so its images are tiny.
BASE_IMAGE = ('ubuntu', 'base', 'library/ubuntu', 1, 1.0)
APP_IMAGE = ('app', 'app', 'bench/app', 1, 1.0)
FLEET_IMAGES = ('fleet', 'fleet', 'fleet', 12, 1.0)
QUAY_IMAGES = ('quay', 'fleet', None, 60, 0.002)
# The fleet the mirroring workflows copy registry to registry: many small repositories (per-image costs dominate),
# the same size at every --scale (its factor is absolute): --quick only mirrors fewer of them.
MIRROR_IMAGES = ('mirror', 'fleet', 'mirror', 100, 0.002)
SEED_WORKERS = 8


# --- small pure helpers ---------------------------------------------------------------------------------------

def parse_hostport(value):
    """Split 'HOST:PORT' into (host, int port); raises ValueError when there is no numeric port."""
    host, sep, port = value.rpartition(':')
    if not sep or not host or not port.isdigit():
        raise ValueError(f'expected HOST:PORT, got {value!r}')
    return host.strip('[]'), int(port)


def scale_tag(scale):
    """A directory-safe name for a generator scale: 1 -> 'scale-1', 0.02 -> 'scale-0.02'."""
    return 'scale-' + ('%g' % scale)


def curve_images(counts):
    """The memory curve's fleets: for every N, N mirroring-fleet images under memcurve-N/ (no prefix)."""
    _, model, _, _, factor = MIRROR_IMAGES
    return [{'key': f'curve-{n}', 'model': model, 'repo': f'memcurve-{n}', 'count': n, 'scale': factor}
            for n in counts]


def expected_images(scale, prefix='', org='benchorg', fleet_count=None, mirror_count=None):
    """What seed puts in the registry: a list of dicts {key, model, repo, count, scale}.

    repo is the repository name for single images, the namespace for the fleets (the mirroring fleet's,
    'mirror-COUNT', names its size so fleets of several sizes live side by side), and the organisation for the
    Quay images (its repositories are ORG/<image name>). prefix (e.g. 'quick/') keeps images of another scale
    apart in a shared registry.
    """
    images = []
    for key, model, repo, count, factor in (BASE_IMAGE, APP_IMAGE, FLEET_IMAGES, QUAY_IMAGES, MIRROR_IMAGES):
        if key == 'fleet' and fleet_count:
            count = fleet_count
        size = round(scale * factor, 6)
        if key == 'mirror':
            count = mirror_count or count
            repo = f'{repo}-{count}'
            size = factor
        repo = None if repo is None else prefix + repo
        if key == 'quay':
            repo = org
        images.append({'key': key, 'model': model, 'repo': repo, 'count': count, 'scale': size})
    return images


def manifest_sizes(manifest):
    """{digest: size} of the config and layers a manifest (dict) names: what a full transfer moves."""
    sizes = {manifest['config']['digest']: manifest['config']['size']}
    for layer in manifest['layers']:
        sizes[layer['digest']] = layer['size']
    return sizes


def image_bytes(manifests):
    """Compressed bytes of the blobs of all manifests, each blob counted once (as a shared-layer run moves them)."""
    sizes = {}
    for manifest in manifests:
        sizes.update(manifest_sizes(manifest))
    return sum(sizes.values())


def _write_json_atomic(path, data):
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def bench_registry(work, name, storage, tls):
    """A registry of the benchmark: NAME.log and NAME.json in WORK, storage in STORAGE, the shared TLS material.

    Its log keeps to warnings and the access log (benchmark.sh counts requests by protocol in it), and it dies
    with this process even when that is killed outright.
    """
    return Registry(work, tls=tls or False, name=name, storage_dir=storage, log_level='warn', die_with_parent=True)


def skopeo_push(layout, host, name, tag, cert_dir=None):
    """skopeo copy oci:LAYOUT:TAG docker://HOST/NAME:TAG without credentials; raises ServiceError (a RuntimeError)."""
    flags = [f'--dest-cert-dir={cert_dir}'] if cert_dir else ['--dest-tls-verify=false']
    skopeo_copy(f'oci:{layout}:{tag}', f'docker://{host}/{name}:{tag}', '--quiet', *flags, dest_creds=None)


def cmd_up(args):
    from tools import delayproxy, quay_standin

    cache, work = Path(args.cache), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started, stoppers = [], []
    tls = write_tls_material(work / 'tls') if args.tls else None
    ca = str(tls['ca']) if tls else None
    if ca:
        # The Quay stand-in reads the registry through urllib, which trusts SSL_CERT_FILE.
        os.environ['SSL_CERT_FILE'] = ca
    try:
        if args.registry:
            source = {'host': args.registry, 'started': False}
            url = ('https://' if tls else 'http://') + args.registry
            if not probe_registry(url, ca):
                raise RuntimeError(f'no registry answers at {url}/v2/')
        elif not tls and probe_registry('http://' + DEFAULT_REGISTRY):
            source = {'host': DEFAULT_REGISTRY, 'started': False}
        else:
            registry = bench_registry(work, 'registry-source', cache / 'registry', tls).start()
            started.append(registry)
            source = {'host': registry.host, 'started': True, 'storage': str(registry.storage_dir),
                      'log': str(registry.log_path)}
        push_storage = work / 'push-registry'
        push = bench_registry(work, 'registry-push', push_storage, tls).start()
        started.append(push)
        scheme = 'https' if tls else 'http'
        standin = quay_standin.QuayStandin(registry_url=f'{scheme}://{source["host"]}').start()
        stoppers.append(standin.stop)
        state = {
            'tls': bool(tls), 'ca': ca, 'cert_dir': str(tls['cert_dir']) if tls else None,
            'latency_ms': args.latency, 'bandwidth_mbit': args.bandwidth,
            'source': dict(source, direct=source['host'], url=f'{scheme}://{source["host"]}'),
            'push': {'host': push.host, 'direct': push.host, 'storage': str(push_storage),
                     'log': str(push.log_path), 'started': True},
            'quay': {'api': f'{standin.url}/api/v1', 'direct': standin.url},
        }
        if args.latency or args.bandwidth:
            for name in ('source', 'push', 'quay'):
                target = state[name]['direct'].replace('http://', '')
                host, port, stop = delayproxy.start_proxy_thread(target, args.latency, args.bandwidth)
                stoppers.append(stop)
                if name == 'quay':
                    state['quay']['api'] = f'http://{host}:{port}/api/v1'
                else:
                    state[name]['host'] = f'{host}:{port}'
        _write_json_atomic(args.state, state)
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: done.set())
        while not done.wait(1.0):
            for registry in started:
                if not registry.running:
                    print(f'bench_env: registry {registry.host} exited; see {registry.log_path}', file=sys.stderr)
                    return 1
        return 0
    finally:
        for stop in reversed(stoppers):
            stop()
        for registry in reversed(started):
            registry.stop()


# --- seeding --------------------------------------------------------------------------------------------------

def _layout_manifest(layout):
    """(manifest digest, manifest dict) of the single image of an OCI layout directory."""
    index = json.loads((Path(layout) / 'index.json').read_text())
    digest = index['manifests'][0]['digest']
    manifest = json.loads((Path(layout) / 'blobs' / 'sha256' / digest.split(':', 1)[1]).read_text())
    return digest, manifest


def generate(cache, model, scale, count):
    """Generate a model once per (scale, count) under cache/images; returns {image name: layout dir}."""
    from tools import imagegen

    target = Path(cache) / 'images' / scale_tag(scale) / (f'{model}-{count}' if model == 'fleet' else model)
    stamp = target.parent / f'.{target.name}.done'
    if not stamp.exists():
        print(f'bench_env: generating {model} images at scale {scale:g} in {target}', file=sys.stderr)
        shutil.rmtree(target, ignore_errors=True)
        infos = imagegen.generate(model, str(target), scale=scale, count=count)
        stamp.write_text(json.dumps({i.name: i.path for i in infos}))
    return json.loads(stamp.read_text())


def registry_digest(url, name, tag, ca=None):
    """The manifest digest the registry holds for name:tag, or None."""
    request = urllib.request.Request(f'{url}/v2/{name}/manifests/{tag}', method='HEAD',
                                     headers={'Accept': MANIFEST_ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=30, context=client_context(ca)) as response:
            return response.headers.get('Docker-Content-Digest')
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def skopeo_sync_yaml(host, repos, tag, tls_verify=True, cert_dir=None):
    """The `skopeo sync --src yaml` file naming exactly `repos` (with `tag`) of the registry at host.

    Every scalar is written as a JSON string, which YAML reads as the same string, so no name can change the
    document's shape.
    """
    lines = [f'{json.dumps(host)}:', f'  tls-verify: {"true" if tls_verify else "false"}']
    if cert_dir:
        lines.append(f'  cert-dir: {json.dumps(str(cert_dir))}')
    lines.append('  images:')
    for repo in repos:
        lines += [f'    {json.dumps(repo)}:', f'      - {json.dumps(tag)}']
    return '\n'.join(lines) + '\n'


def cmd_seed(args):
    state = json.loads(Path(args.state).read_text())
    url = state['source']['url']
    ca, cert_dir = state['ca'], state['cert_dir']
    result, jobs = {}, []
    specs = []
    if not args.curve_only:
        specs = expected_images(args.scale, args.prefix, args.org, mirror_count=args.mirror_repos)
    for spec in specs + curve_images(args.curve_repos):
        layouts = generate(args.cache, spec['model'], spec['scale'], spec['count'])
        repos = {}
        for image_name, layout in sorted(layouts.items()):
            if spec['key'] in ('ubuntu', 'app'):
                repo = spec['repo']
            else:
                repo = f'{spec["repo"]}/{image_name}'
            repos[repo] = layout
        manifests = []
        for repo, layout in repos.items():
            digest, manifest = _layout_manifest(layout)
            manifests.append(manifest)
            jobs.append((repo, layout, digest))
        entry = {'repos': sorted(repos), 'bytes': image_bytes(manifests),
                 'layers': sum(len(m['layers']) for m in manifests), 'scale': spec['scale']}
        if spec['key'] in ('ubuntu', 'app'):
            entry['name'] = spec['repo']
        elif spec['key'] == 'fleet':
            entry['glob'] = f'{spec["repo"]}/*'
        elif spec['key'].startswith('curve-'):
            entry.update(glob=f'{spec["repo"]}/*', org=spec['repo'], count=spec['count'])
            result.setdefault('curve', {})[str(spec['count'])] = entry
            continue
        elif spec['key'] == 'mirror':
            entry['glob'] = f'{spec["repo"]}/*'
            entry['skopeo_yaml'] = str(Path(args.out).resolve().parent / 'skopeo-sync.yaml')
            Path(entry['skopeo_yaml']).write_text(skopeo_sync_yaml(
                state['source']['host'], sorted(repos), 'latest', tls_verify=bool(state['tls']), cert_dir=cert_dir))
        else:
            entry['org'] = spec['repo']
        result[spec['key']] = entry

    def seed_one(job):
        repo, layout, digest = job
        if registry_digest(url, repo, 'latest', ca) == digest:
            return 0
        skopeo_push(layout, state['source']['direct'], repo, 'latest', cert_dir)
        if registry_digest(url, repo, 'latest', ca) != digest:
            raise RuntimeError(f'{repo}:latest in {url} does not have manifest {digest} after the copy')
        return 1

    with concurrent.futures.ThreadPoolExecutor(SEED_WORKERS) as pool:
        copied = sum(pool.map(seed_one, jobs))
    print(f'bench_env: {len(jobs)} images in {url}, {copied} copied with skopeo', file=sys.stderr)
    result['tag'] = 'latest'
    _write_json_atomic(args.out, result)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description='Benchmark environment for tools/benchmark.sh.')
    sub = parser.add_subparsers(dest='command', required=True)
    up = sub.add_parser('up', help='start registries, the Quay stand-in and proxies; stop them on SIGTERM')
    up.add_argument('--state', required=True, help='JSON file to write the addresses to')
    up.add_argument('--cache', required=True, help='persistent directory (registry storage, images)')
    up.add_argument('--work', required=True, help='directory for this run (push registry storage, logs, TLS)')
    up.add_argument('--registry', help='use this registry (HOST:PORT) as the source')
    up.add_argument('--tls', action='store_true', help='start TLS registries with a generated CA')
    up.add_argument('--latency', type=float, default=0.0, help='added round trip in ms between client and servers')
    up.add_argument('--bandwidth', type=float, default=0.0, help='per-connection cap in Mbit/s')
    seed = sub.add_parser('seed', help='generate the benchmark images and copy missing ones in with skopeo')
    seed.add_argument('--state', required=True)
    seed.add_argument('--cache', required=True)
    seed.add_argument('--scale', type=float, default=1.0)
    seed.add_argument('--prefix', default='', help='repository name prefix, e.g. quick/')
    seed.add_argument('--org', default='benchorg', help='Quay organisation name')
    seed.add_argument('--mirror-repos', type=int, default=MIRROR_IMAGES[3],
                      help='repositories in the mirroring fleet (default %(default)s)')
    seed.add_argument('--curve-repos', default='', help='comma-separated repository counts of the memory curve')
    seed.add_argument('--curve-only', action='store_true', help='seed only the memory curve\'s fleets')
    seed.add_argument('--out', required=True, help='JSON file describing the seeded images')
    args = parser.parse_args(argv)
    if args.command == 'seed':
        try:
            args.curve_repos = [int(n) for n in args.curve_repos.split(',') if n.strip()]
        except ValueError:
            parser.error(f'--curve-repos wants a comma-separated list of counts, got {args.curve_repos!r}')
        if any(n < 1 for n in args.curve_repos):
            parser.error('--curve-repos counts must be at least 1')
    if args.command == 'seed' and args.mirror_repos < 1:
        parser.error('--mirror-repos must be at least 1')
    if args.command == 'up':
        if args.registry:
            try:
                parse_hostport(args.registry)
            except ValueError as exc:
                parser.error(str(exc))
        return cmd_up(args)
    return cmd_seed(args)


if __name__ == '__main__':
    try:
        sys.exit(main())
    except RuntimeError as exc:
        print(f'bench_env: {exc}', file=sys.stderr)
        sys.exit(1)
