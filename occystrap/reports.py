"""The read-only commands: info, search and check, and the small ones scripts use: tags, digest, manifest, config.

Each builds the input for a SOURCE URI and runs over every image it names with `pipeline.for_each_image`, so a
multi-image source is handled -J images at a time and one failing image does not stop the others. Each returns
True when every image succeeded. Results go to stdout in reference order once every image is done, so output is
the same from run to run whatever -J: text for people, or with -O json one JSON document that `jq` reads (failed
images appear in it with an error). Errors and logs go to stderr.
"""

import json
import sys
import threading

from occystrap import oci, pipeline, streams
from occystrap.errors import OccystrapError, UsageError
from occystrap.filters import search as search_filter
from occystrap.filters.inspect import known_size
from occystrap.main import JSON_SCHEMA
from occystrap.terminal import printable

CREATED_BY_WIDTH = 60


def _json(settings):
    return settings.output_format == 'json'


def _emit(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def _run(uri, ctx, one):
    """Run one(source, ref) -> payload for every image; returns (results, {reference: payload})."""
    source = pipeline.build_input(uri, ctx)
    payloads = {}
    lock = threading.Lock()
    try:
        def each(ref):
            payload, layers = one(source, ref)
            with lock:
                payloads[str(ref)] = payload
            return layers

        results = pipeline.for_each_image(source, each, ctx)
    finally:
        source.close()
    return results, payloads


# --- info -------------------------------------------------------------------------------------------------------

def describe(image):
    """Everything info reports about an image, as a JSON-ready dict."""
    config = image.config
    runtime = config.get('config') if isinstance(config.get('config'), dict) else {}
    layers = []
    for index, layer in enumerate(image.layers):
        origin = layer.origin
        layers.append({
            'index': index,
            'diffid': layer.diffid,
            'digest': origin.digest if origin is not None else None,
            'media_type': origin.media_type if origin is not None else None,
            'compressed_size': origin.size if origin is not None else None,
            'size': known_size(layer),
            'created_by': layer.created_by,
        })
    return {
        'schema': JSON_SCHEMA,
        'image': image.name,
        'tag': image.tag,
        'reference': image.reference,
        'digest': image.manifest_digest,
        'source': image.source,
        'manifest_digest': image.manifest_digest,
        'manifest_media_type': image.manifest_media_type,
        'config_digest': image.config_digest,
        'config_media_type': image.config_media_type,
        'platform': image.platform,
        'os': config.get('os'),
        'architecture': config.get('architecture'),
        'variant': config.get('variant'),
        'created': config.get('created'),
        'author': config.get('author'),
        'entrypoint': runtime.get('Entrypoint'),
        'cmd': runtime.get('Cmd'),
        'env': runtime.get('Env'),
        'working_dir': runtime.get('WorkingDir'),
        'user': runtime.get('User'),
        'labels': runtime.get('Labels'),
        'annotations': image.annotations or None,
        'layers': layers,
    }


def _short(digest):
    if not digest:
        return '-'
    algorithm, _, hexpart = digest.partition(':')
    return '%s:%s' % (algorithm, hexpart[:12]) if hexpart else digest[:19]


def _size(n):
    from occystrap.progress import human_bytes
    return human_bytes(n) if n is not None else '-'


def _truncate(text, width=CREATED_BY_WIDTH):
    text = ' '.join((text or '').split())
    return text if len(text) <= width else text[:width - 3] + '...'


def format_info(info):
    """The text form of describe()'s dict (every value from the image made printable)."""
    lines = [printable(info['reference'])]
    fields = [('source', info['source'])]
    index = info.get('index')
    if index:
        fields.append(('index', '%s (%s, %d manifests)' % (index['digest'], index['media_type'], index['manifests'])))
        fields.append(('platforms', '%s (showing %s)' % (', '.join(index['platforms']) or '-', index['selected'])))
    fields += [
        ('manifest', '%s (%s)' % (info['manifest_digest'], info['manifest_media_type'])
         if info['manifest_digest'] else '-'),
        ('config', '%s (%s)' % (info['config_digest'], info['config_media_type'])),
        ('platform', info['platform'] or '-'),
        ('created', info['created'] or '-'),
    ]
    for key in ('entrypoint', 'cmd'):
        if info[key]:
            fields.append((key, json.dumps(info[key])))
    layers = info['layers']
    compressed = [layer['compressed_size'] for layer in layers]
    sizes = [layer['size'] for layer in layers]
    totals = '%d' % len(layers)
    if layers and None not in compressed:
        totals += ', %s compressed' % _size(sum(compressed))
    if layers and None not in sizes:
        totals += ', %s uncompressed' % _size(sum(sizes))
    fields.append(('layers', totals))
    lines.extend('  %-9s %s' % (key + ':', printable(value)) for key, value in fields)
    if layers:
        rows = [('#', 'DIFFID', 'BLOB', 'COMPRESSED', 'SIZE', 'CREATED BY')]
        for layer in layers:
            rows.append((str(layer['index']), printable(_short(layer['diffid'])), printable(_short(layer['digest'])),
                         _size(layer['compressed_size']), _size(layer['size']),
                         printable(_truncate(layer['created_by']))))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        right = (False, False, False, True, True)   # sizes right-aligned, the rest left
        for row in rows:
            cells = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right)]
            lines.append('  ' + '  '.join(cells + [row[5]]))
    return '\n'.join(line.rstrip() for line in lines) + '\n'


def open_for_info(source, ref):
    """(image, index dict or None): the image info describes and, when the reference names an index, its digest,
    media type and platforms. Inputs that do not resolve references give no index."""
    resolve = getattr(source, 'resolve', None)
    if resolve is None:
        return source.open(ref), None
    resolved = resolve(ref)
    if not resolved.is_index:
        return source.open(ref, resolved), None
    index = resolved.document
    os_name, architecture, variant = source.platform
    entry = index.select(oci.Platform(os_name, architecture, variant or ''))
    if entry is None:
        raise OccystrapError('%s is an index with no %s image; available: %s'
                             % (oci.shown(str(ref)), '/'.join(p for p in (os_name, architecture, variant) if p),
                                ', '.join(index.platforms()) or 'none'))
    described = {'digest': resolved.digest, 'media_type': resolved.media_type, 'platforms': index.platforms(),
                 'manifests': len(index.manifests), 'selected': str(entry.platform)}
    return source.open(ref, resolved, child=entry), described


def info(uri, ctx):
    """Describe every image the source names (manifest, config, platform, layers). True when all succeeded."""
    as_json = _json(ctx.settings)

    def one(source, ref):
        image, index = open_for_info(source, ref)
        payload = describe(image)
        if index is not None:
            payload['index'] = index
        # Kept as the text it will be printed as, not as a dict: a few KiB less per image until the end.
        return _json_item(payload) if as_json else format_info(payload), len(image.layers)

    results, payloads = _run(uri, ctx, one)
    # Written item by item: joining hundreds of reports into one string first would double the memory they take.
    if as_json:
        for number, r in enumerate(results):
            item = payloads.pop(r.reference, None) or _json_item({'schema': JSON_SCHEMA, 'image': r.reference,
                                                                  'reference': r.reference, 'error': r.error})
            sys.stdout.write(('[\n' if number == 0 else ',\n') + item)
        _emit('\n]\n' if results else '[]\n')
    else:
        texts = (payloads.pop(r.reference) for r in results if r.reference in payloads)
        for number, text in enumerate(texts):
            sys.stdout.write(text if number == 0 else '\n' + text)
        sys.stdout.flush()
    return all(r.ok for r in results)


def _json_item(value):
    """`value` as an item of a JSON list printed with indent=2: the same text json.dumps of the list would give."""
    return '\n'.join('  ' + line for line in json.dumps(value, indent=2).split('\n'))


# --- search -----------------------------------------------------------------------------------------------------

def search(uri, pattern, regex, script_friendly, ctx):
    """List every layer member of every image whose path matches. True when every image could be searched."""
    matcher = search_filter.PathMatcher([pattern], regex=regex)
    as_json = _json(ctx.settings)

    def one(source, ref):
        image = source.open(ref)
        per_layer = ctx.map(lambda layer: search_filter.find_matches(layer, matcher), image.layers)
        records = []
        for layer, matches in zip(image.layers, per_layer):
            for match in matches:
                records.append(search_filter.match_record(image, layer.diffid, match))
        return records, len(image.layers)

    results, payloads = _run(uri, ctx, one)
    records = [record for r in results for record in payloads.get(r.reference) or []]
    if as_json:
        _emit(json.dumps(records, indent=2) + '\n')
    else:
        search_filter.print_lines([search_filter.format_match(r['image'], r['tag'], r['diffid'], r['path'],
                                                              script_friendly) for r in records])
    return all(r.ok for r in results)


# --- check ------------------------------------------------------------------------------------------------------

def config_errors(image):
    """What is wrong with an image's config and its agreement with the layers (empty list when nothing)."""
    config = image.config
    errors = []
    for key in ('os', 'architecture'):
        if not isinstance(config.get(key), str) or not config.get(key):
            errors.append('config has no %s' % key)
    rootfs = config.get('rootfs')
    if not isinstance(rootfs, dict):
        errors.append('config has no rootfs')
        return errors
    if rootfs.get('type') != 'layers':
        errors.append('config rootfs.type is %r, not \'layers\'' % rootfs.get('type'))
    diffids = rootfs.get('diff_ids')
    if not isinstance(diffids, list):
        errors.append('config has no rootfs.diff_ids list')
        return errors
    if len(diffids) != len(image.layers):
        errors.append('image has %d layers but config lists %d diff_ids' % (len(image.layers), len(diffids)))
    else:
        for index, (layer, diffid) in enumerate(zip(image.layers, diffids)):
            if layer.diffid != diffid:
                errors.append('layer %d has diffid %s but config lists %s' % (index, layer.diffid, diffid))
    history = config.get('history')
    if isinstance(history, list) and history:
        real = [h for h in history if isinstance(h, dict) and not h.get('empty_layer')]
        if len(real) != len(image.layers):
            errors.append('config history has %d non-empty entries for %d layers' % (len(real), len(image.layers)))
    return errors


def verify_layer(layer, ctx):
    """Read a layer to its end, verifying its blob digest and diffid; returns an error message or None."""
    try:
        if layer.path is not None:
            actual = streams.sha256_file(layer.path)
            if actual != layer.diffid:
                return 'layer %s: file hashes to %s' % (layer.diffid, actual)
            return None
        reader = layer.open()
        try:
            count = streams.drain_verified(reader)
        finally:
            reader.close()
        ctx.stats.add(nbytes=count)
        return None
    except OccystrapError as e:
        return str(e)
    except streams.DECOMPRESS_ERRORS as e:
        return 'layer %s is corrupt: %s' % (layer.diffid, e)


def check_image(source, ref, fast, ctx):
    """Every problem found with one image (empty list when it is sound)."""
    try:
        image = source.open(ref)
    except OccystrapError as e:
        return [str(e)], 0
    errors = config_errors(image)
    if ref.digest and image.manifest_digest and image.manifest_digest != ref.digest:
        errors.append('manifest digest is %s, expected %s' % (image.manifest_digest, ref.digest))
    if not fast:
        errors.extend(e for e in ctx.map(lambda layer: verify_layer(layer, ctx), image.layers) if e)
    ctx.stats.add(images=1, layers=len(image.layers))
    return errors, len(image.layers)


def check(uri, fast, ctx):
    """Verify every image the source names; with `fast`, everything but the layer data. True when all are sound."""
    as_json = _json(ctx.settings)

    results, payloads = _run(uri, ctx, lambda source, ref: check_image(source, ref, fast, ctx))
    report = []
    for r in results:
        errors = payloads.get(r.reference, [r.error] if not r.ok else [])
        report.append({'schema': JSON_SCHEMA, 'image': r.reference, 'reference': r.reference,
                       'ok': r.ok and not errors, 'errors': errors})
    if as_json:
        _emit(json.dumps(report, indent=2) + '\n')
    else:
        lines = []
        for item in report:
            state = 'ok' if item['ok'] else 'FAILED: %s' % '; '.join(item['errors'])
            lines.append('%s %s\n' % (printable(item['image']), printable(state)))
        _emit(''.join(lines))
    return all(item['ok'] for item in report)


# --- tags, digest, manifest, config -----------------------------------------------------------------------------

def _one_image(source, command):
    """The one image a small command reads; a source naming several is a usage error that lists them."""
    refs = source.references()
    if len(refs) != 1:
        raise UsageError('occystrap %s reads one image, and %s names %d: %s'
                         % (command, source.uri, len(refs), ', '.join(printable(r) for r in refs[:10])
                            + (', ...' if len(refs) > 10 else '')))
    return refs[0]


def _open(uri, ctx, command):
    if uri.scheme not in pipeline.INSPECTABLE:
        raise pipeline.unsupported(command, uri.scheme)
    if ctx.settings.shard is not None:     # one image or one repository: nothing to share out
        raise UsageError('occystrap %s reads one image or repository; --shard %s splits multi-image sources'
                         % (command, ctx.settings.shard))
    return pipeline.build_input(uri, ctx)


def _emit_bytes(data):
    """Exact bytes to stdout (a pipe or file gets them byte for byte; a terminal gets control characters escaped)."""
    if sys.stdout.isatty():
        _emit(printable(data.decode('utf-8', 'surrogateescape')))
        return
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def tags(uri, ctx):
    """Print every tag the source holds: one a line, or with -O json one object."""
    source = _open(uri, ctx, 'tags')
    try:
        found = source.tags()
    finally:
        source.close()
    if _json(ctx.settings):
        repository = uri.name if uri.scheme == 'registry' else None
        _emit(json.dumps({'schema': JSON_SCHEMA, 'source': str(uri), 'repository': repository,
                          'tags': found}, indent=2) + '\n')
    else:
        _emit(''.join(printable(tag) + '\n' for tag in found))


def digest(uri, ctx):
    """Print the digest of what the source names (the index's for a multi-platform tag)."""
    source = _open(uri, ctx, 'digest')
    try:
        ref = _one_image(source, 'digest')
        data, media_type = source.manifest_bytes(ref)
    finally:
        source.close()
    value = oci.digest_of(data)
    if _json(ctx.settings):
        _emit(json.dumps({'schema': JSON_SCHEMA, 'reference': str(ref), 'digest': value, 'media_type': media_type,
                          'size': len(data)}, indent=2) + '\n')
    else:
        _emit(value + '\n')


def manifest(uri, raw, ctx):
    """Print the manifest (or index) the source names: exact bytes with `raw`, else indented JSON."""
    source = _open(uri, ctx, 'manifest')
    try:
        ref = _one_image(source, 'manifest')
        data, media_type = source.manifest_bytes(ref)
    finally:
        source.close()
    if raw:
        _emit_bytes(data)
        return
    document = oci.load_json(data, 'manifest of %s' % printable(ref))
    if _json(ctx.settings):
        _emit(json.dumps({'schema': JSON_SCHEMA, 'reference': str(ref), 'digest': oci.digest_of(data),
                          'media_type': media_type, 'manifest': document}, indent=2) + '\n')
    else:
        _emit(json.dumps(document, indent=2) + '\n')


def config(uri, ctx):
    """Print the exact config blob of the image the source names (with -O json, inside an object)."""
    source = _open(uri, ctx, 'config')
    try:
        ref = _one_image(source, 'config')
        data = source.config_bytes(ref)
    finally:
        source.close()
    document = oci.load_json_object(data, 'config of %s' % printable(ref))
    if _json(ctx.settings):
        _emit(json.dumps({'schema': JSON_SCHEMA, 'reference': str(ref), 'digest': oci.digest_of(data),
                          'config': document}, indent=2) + '\n')
    else:
        _emit_bytes(data)
