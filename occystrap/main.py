"""The command line (the `occystrap` command and `python -m occystrap`): global options, then the commands.

Heavy modules are imported inside the commands so that `occystrap --help` answers at once.
"""

import contextlib
import json
import logging
import os
import re
import sys

import click

from occystrap import __version__
from occystrap.errors import OccystrapError, UsageError

# The defaults of -j and -J come from the benchmark (docs/performance.md, "Recommended settings"): change them only
# with its numbers, in a commit of their own. settings.Settings takes its defaults from here.
DEFAULT_PARALLEL = 8
DEFAULT_IMAGE_PARALLEL = 3
DEFAULT_RETRIES = 3

# The version of every JSON object the commands print (docs/commands.md, "JSON output"); raise it when a key
# changes meaning or goes away, not when one is added.
JSON_SCHEMA = 1

LOG = logging.getLogger('occystrap')

# Hints the failing command's URIs earn (docker://HOST:PORT/... meant as a registry), added to its error.
_hints = []


def _note_source(text):
    from occystrap.uris import registry_hint
    hint = registry_hint(text)
    if hint:
        _hints.append(hint)


# Bounds of the numeric options (docs/commands.md): past them a value is a typo or would hang or exhaust the machine.
PARALLEL_RANGE = (1, 256)
RETRIES_RANGE = (0, 20)
RATE_LIMIT_RANGE = (0.01, 100000.0)


class Bounded(click.ParamType):
    """A finite number within [low, high]: nan, inf and absurd values are usage errors, not a hang or no limit."""

    def __init__(self, kind, low, high):
        self.kind = kind
        self.low = low
        self.high = high
        self.name = 'integer' if kind is int else 'number'

    def convert(self, value, param, ctx):
        import math
        if isinstance(value, bool):
            self.fail(self.describe(), param, ctx)
        if isinstance(value, (int, float)):
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                self.fail(self.describe(), param, ctx)
        if not math.isfinite(number) or not self.low <= number <= self.high:
            self.fail(self.describe(), param, ctx)
        return number

    def describe(self):
        if self.kind is int:
            return 'must be at least %d and at most %d (a whole number)' % (self.low, self.high)
        return 'must be a finite number between %s and %s' % (_number(self.low), _number(self.high))


def _number(value):
    return ('%f' % value).rstrip('0').rstrip('.')


class EnvOption(click.Option):
    """An option whose bad value, when it came from its OCCYSTRAP_* variable, is reported under that variable's name."""

    def process_value(self, ctx, value):
        try:
            return super().process_value(ctx, value)
        except click.BadParameter as e:
            message = e.message
            if isinstance(self.type, click.types.BoolParamType):
                message = 'must be true or false (1/0, yes/no, on/off)'
            source = ctx.get_parameter_source(self.name)
            if source == click.core.ParameterSource.ENVIRONMENT and isinstance(self.envvar, str):
                shown = os.environ.get(self.envvar, '')
                shown = shown if shown.isprintable() and len(shown) <= 40 else repr(shown[:40])
                raise click.UsageError('%s=%s: %s %s' % (self.envvar, shown, max(self.opts, key=len), message),
                                       ctx) from None
            if message is not e.message:
                raise click.BadParameter(message, ctx, param=self) from None
            raise


class RedactingFormatter(logging.Formatter):
    """Another formatter's lines with every URI's userinfo and secret query values hidden (uris.redact)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def format(self, record):
        from occystrap.uris import redact
        return redact(self.inner.format(record))


def _env(name):
    return 'OCCYSTRAP_' + name


def option(*decls, **attrs):
    """click.option for the global options: every one can come from an OCCYSTRAP_* variable."""
    return click.option(*decls, cls=EnvOption, **attrs)


def _platforms(ctx, param, value):
    """--platform values (and OCCYSTRAP_PLATFORM, comma-separated) checked as os/arch[/variant] or 'all'."""
    if not value:
        value = tuple(p for p in os.environ.get(_env('PLATFORM'), '').split(',') if p.strip())
    wanted = []
    for text in value:
        for item in text.split(','):
            item = item.strip()
            if item.lower() == 'all':
                wanted.append('all')
                continue
            from occystrap.oci import Platform
            try:
                Platform.parse(item)
            except ValueError as e:
                raise click.BadParameter(str(e))
            wanted.append(item)
    if 'all' in wanted and len(wanted) > 1:
        raise click.BadParameter('"all" cannot be combined with other platforms')
    return tuple(dict.fromkeys(wanted))


def _platform_settings(ctx, platforms, os_, architecture, variant):
    """(platforms, os, architecture, variant): --platform wins; --os/--architecture/--variant given explicitly
    name one platform; neither leaves platforms None (a whole index where the destination holds one)."""
    from click.core import ParameterSource
    explicit = any(ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
                   for name in ('os_', 'architecture', 'variant'))
    if platforms:
        if platforms != ('all',):
            from occystrap.oci import Platform
            first = Platform.parse(platforms[0])
            os_, architecture, variant = first.os, first.architecture, first.variant or None
        return platforms, os_, architecture, variant
    if explicit:
        return ('/'.join(p for p in (os_, architecture, variant) if p),), os_, architecture, variant
    return None, os_, architecture, variant


def _shard(ctx, param, value):
    """--shard I/N (or OCCYSTRAP_SHARD) as a sharding.Shard; EnvOption names the variable when it came from one."""
    if value is None:
        return None
    from occystrap import sharding
    try:
        return sharding.parse_shard(value)
    except ValueError as e:
        raise click.BadParameter(str(e))


SIZE_SUFFIXES = {'': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
_SIZE_RE = re.compile(r'^(\d{1,15})([KMGT]?)(?:I?B)?$')


def parse_size(text):
    """Bytes from '4096', '512K', '10G' (binary suffixes K, M, G, T, also written KiB or KB); None if malformed."""
    match = _SIZE_RE.match(text.strip().upper())
    if not match:
        return None
    return int(match.group(1)) * SIZE_SUFFIXES[match.group(2)]


def _size(ctx, param, value):
    if value is None:
        return None
    size = parse_size(str(value))
    if size is None or size < 1:   # EnvOption names the variable when the value came from one
        raise click.BadParameter('must be a positive size in bytes, with an optional K, M, G or T suffix, not %r'
                                 % value)
    return size


@click.group(context_settings={'help_option_names': ['-h', '--help'], 'max_content_width': 110})
@click.version_option(__version__, prog_name='occystrap')
@option('-j', '--parallel', type=Bounded(int, *PARALLEL_RANGE), default=DEFAULT_PARALLEL, show_default=True,
        envvar=_env('PARALLEL'), help='Layer transfers in flight for one image.')
@option('-J', '--image-parallel', type=Bounded(int, *PARALLEL_RANGE), default=DEFAULT_IMAGE_PARALLEL,
        show_default=True, envvar=_env('IMAGE_PARALLEL'), help='Images processed at once in a multi-image run.')
@option('--rate-limit', type=Bounded(float, *RATE_LIMIT_RANGE), default=None, envvar=_env('RATE_LIMIT'),
        help='Cap on HTTP requests per second, shared by every thread and image of the run.')
@option('--retries', type=Bounded(int, *RETRIES_RANGE), default=DEFAULT_RETRIES, show_default=True,
        envvar=_env('RETRIES'), help='Retries of a failed request (exponential backoff, Retry-After honoured).')
@option('--username', envvar=_env('USERNAME'), help='Registry user name.')
@option('--password', envvar=_env('PASSWORD'), help='Registry password (prefer OCCYSTRAP_PASSWORD).')
@option('--password-stdin', is_flag=True,
        help='Read the password of --username (or of a --src-creds/--dest-creds USER) from standard input.')
@option('--src-creds', metavar='USER[:PASS]', envvar=_env('SRC_CREDS'),
        help='Credentials for the source registry (before --username and credential files).')
@option('--dest-creds', metavar='USER[:PASS]', envvar=_env('DEST_CREDS'),
        help='Credentials for the destination registry (before --username and credential files).')
@option('--authfile', type=click.Path(exists=True, dir_okay=False), envvar=_env('AUTHFILE'),
        help='Credential file (auth.json or Docker config.json) read first, instead of $REGISTRY_AUTH_FILE.')
@option('--insecure', is_flag=True, envvar=_env('INSECURE'),
        help='Plain HTTP to every registry of the run (for one registry: ?insecure=true on its URI).')
@option('--ca-cert', type=click.Path(exists=True, dir_okay=False), envvar=_env('CA_CERT'),
        help='Extra CA bundle (PEM) for TLS registries.')
@option('--http2/--no-http2', default=False, show_default=True, envvar=_env('HTTP2'),
        help='HTTP/2 for manifests, configs and tokens where a TLS server offers it (blobs always use HTTP/1.1).')
@option('--compression', type=click.Choice(['gzip', 'zstd']), default='gzip', show_default=True,
        envvar=_env('COMPRESSION'), help='Layer compression for registry output.')
@option('--os', 'os_', default='linux', show_default=True, envvar=_env('OS'),
        help='Platform OS picked from a manifest list / OCI index.')
@option('--architecture', default='amd64', show_default=True, envvar=_env('ARCHITECTURE'),
        help='Platform architecture picked from a manifest list / OCI index.')
@option('--variant', default=None, envvar=_env('VARIANT'), help='Platform variant (e.g. v8 for arm64).')
@option('--platform', 'platforms', multiple=True, metavar='OS/ARCH[/VARIANT]', callback=_platforms,
        help='Platform of an index to copy (repeatable, or "all"; OCCYSTRAP_PLATFORM takes a comma-separated '
             'list). Without one a registry destination gets the whole index.')
@option('--dry-run', is_flag=True, envvar=_env('DRY_RUN'),
        help='Say per image what would be copied or is unchanged; write nothing.')
@option('--preserve-digests', is_flag=True, envvar=_env('PRESERVE_DIGESTS'),
        help='Fail before writing when a destination digest would differ from the source digest.')
@option('--referrers', is_flag=True, envvar=_env('REFERRERS'),
        help='Copy what refers to each manifest with it: OCI 1.1 referrers and cosign signature tags.')
@option('--temp-dir', type=click.Path(file_okay=False), envvar=_env('TEMP_DIR'),
        help='Where temporary layer files go (default: beside the destination, else the system temp dir).')
@option('--layer-cache', type=click.Path(dir_okay=False), envvar=_env('LAYER_CACHE'),
        help='JSON file remembering pushed layers across runs.')
@option('-O', '--output-format', type=click.Choice(['text', 'json']), default='text', show_default=True,
        envvar=_env('OUTPUT_FORMAT'), help='Format of info, check and the end-of-run summary.')
@option('--allow-devices', is_flag=True, envvar=_env('ALLOW_DEVICES'),
        help='Create device nodes and FIFOs when extracting (only as root; skipped otherwise).')
@option('--max-extract-bytes', default=None, metavar='SIZE', envvar=_env('MAX_EXTRACT_BYTES'), callback=_size,
        help='Most bytes an extraction (dir:// with expand, oci://, mounts://) may write in a run, e.g. 10G '
             '(default: no limit).')
@option('--shard', metavar='I/N', envvar=_env('SHARD'), callback=_shard,
        help='Keep only shard I (0 to N-1) of N of a multi-image source, by repository (docs/scale.md).')
@option('--stats-file', type=click.Path(dir_okay=False), envvar=_env('STATS_FILE'),
        help='Write the run\'s counters (requests, retries, 429 answers, images, bytes) to this JSON file at the end, '
             'for any command.')
@option('--quiet', '-q', is_flag=True, envvar=_env('QUIET'),
        help='No progress display and no summary line; errors and warnings still print.')
@option('--progress', 'show_progress', is_flag=True, envvar=_env('PROGRESS'),
        help='Draw the progress display on stderr even when stdout or stderr is not a terminal.')
@option('--verbose', is_flag=True, envvar=_env('VERBOSE'), help='Log what is being done.')
@option('--debug', is_flag=True, envvar=_env('DEBUG'), help='Log everything; show tracebacks on errors.')
@click.pass_context
def cli(ctx, parallel, image_parallel, rate_limit, retries, username, password, password_stdin, src_creds, dest_creds,
        authfile, insecure, ca_cert, http2, compression, os_, architecture, variant, platforms, dry_run,
        preserve_digests, referrers, temp_dir, layer_cache,
        output_format, allow_devices, max_extract_bytes, shard, stats_file, quiet, show_progress, verbose, debug):
    """Move and reshape container images without a container engine.

    Global options may also follow the command (occystrap info --insecure SOURCE).

    \b
    SOURCE:      registry://HOST/NAME[:TAG|@DIGEST]  quay://ORG[/GLOB][:TAG]
                 docker://NAME[:TAG]  tar:///PATH.tar
    DESTINATION: tar:///PATH.tar  dir:///PATH[?unique_names=true&expand=true]
                 oci:///PATH  mounts:///PATH  registry://HOST/NAME:TAG  docker://NAME:TAG
    """
    from occystrap import tuning
    from occystrap.settings import Settings
    tuning.apply()   # once per process, for every command run (in-process callers of main() included)
    if quiet and show_progress:
        raise UsageError('--quiet and --progress contradict each other; give one')
    from occystrap.terminal import PrintableFormatter
    handler = logging.StreamHandler(sys.stderr)
    # Log lines carry registry and image text (made printable) and URIs (redacted).
    handler.setFormatter(RedactingFormatter(PrintableFormatter('%(levelname)s: %(message)s')))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
                        handlers=[handler])
    for noisy in ('httpx', 'httpcore', 'hpack', 'h2'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from click.core import ParameterSource
    platforms, os_, architecture, variant = _platform_settings(ctx, platforms, os_, architecture, variant)
    recompress = ctx.get_parameter_source('compression') not in (ParameterSource.DEFAULT, None)
    username, password, src_creds, dest_creds = _credentials(username, password, password_stdin, src_creds,
                                                             dest_creds)
    ctx.obj = Settings(parallel=parallel, image_parallel=image_parallel, rate_limit=rate_limit, retries=retries,
                       username=username, password=password, src_creds=src_creds, dest_creds=dest_creds,
                       authfile=authfile, insecure=insecure, ca_cert=ca_cert, http2=http2,
                       compression=compression, os=os_, architecture=architecture, variant=variant,
                       platforms=platforms, recompress=recompress, dry_run=dry_run, preserve_digests=preserve_digests,
                       referrers=referrers, temp_dir=temp_dir, layer_cache=layer_cache, output_format=output_format,
                       verbose=verbose, debug=debug, allow_devices=allow_devices,
                       max_extract_bytes=max_extract_bytes, shard=shard, stats_file=stats_file, quiet=quiet,
                       progress=show_progress or (not quiet and sys.stdout.isatty() and sys.stderr.isatty()))


def _credentials(username, password, password_stdin, src_creds, dest_creds):
    """--username/--password and --src-creds/--dest-creds as values, a password read from stdin filled in."""
    sides = {}
    for option, text in (('--src-creds', src_creds), ('--dest-creds', dest_creds)):
        if text is not None:
            user, sep, secret = text.partition(':')
            if not user:
                raise UsageError('%s needs USER[:PASSWORD], not an empty user' % option)
            sides[option] = [user, secret if sep else None]
    if password_stdin:
        if password is not None:
            raise UsageError('--password and --password-stdin cannot be used together')
        wanting = [side for side in sides.values() if side[1] is None]
        if not username and not wanting:
            raise UsageError('--password-stdin needs --username, or a --src-creds/--dest-creds USER without password')
        # As docker login --password-stdin: the first line, without its line ending.
        secret = sys.stdin.readline().rstrip('\r\n')
        if not secret:
            raise UsageError('--password-stdin read no password from standard input')
        if username:
            password = secret
        for side in wanting:
            side[1] = secret
    for option, side in sides.items():
        if side[1] is None:
            raise UsageError('%s %s has no password: give USER:PASSWORD, or --password-stdin' % (option, side[0]))
    as_tuple = {option: tuple(side) for option, side in sides.items()}
    return username, password, as_tuple.get('--src-creds'), as_tuple.get('--dest-creds')


def _context(settings):
    from occystrap.pipeline import RunContext
    return RunContext(settings)


@contextlib.contextmanager
def _running(settings):
    """The run's context; a signal cancels its transfers before close() removes its temporary files."""
    from occystrap.cancel import STOPS
    ctx = _context(settings)
    try:
        yield ctx
    except STOPS as e:
        ctx.cancel(getattr(e, 'signum', None))
        raise
    finally:
        try:
            if settings.stats_file:
                _write_stats(settings.stats_file, ctx.counters())
        finally:
            ctx.close()


def _write_stats(path, counters):
    """--stats-file: the run's counters as one JSON object, written whether the run succeeded or not."""
    try:
        with open(path, 'w') as f:
            f.write(json.dumps(dict({'schema': JSON_SCHEMA}, **counters), indent=2) + '\n')
    except OSError as e:
        LOG.warning('cannot write --stats-file %s: %s', path, e.strerror or e)


def _summary(settings, stats, results=None):
    """The one-line end-of-run summary on stderr (or a JSON object on stdout with -O json)."""
    from occystrap.progress import human_bytes
    from occystrap.terminal import printable
    failed = [r for r in (results or []) if not r.ok]
    if settings.output_format == 'json':
        payload = {'schema': JSON_SCHEMA, 'images': stats.images, 'layers': stats.layers, 'bytes': stats.bytes,
                   'downloaded': stats.downloaded, 'uploaded': stats.uploaded, 'seconds': round(stats.seconds, 3),
                   'failed': len(failed), 'throttled': stats.throttled}
        if stats.push is not None:
            payload['push'] = stats.push.as_dict()
        if settings.shard is not None:
            payload['shard'] = str(settings.shard)
            payload['source_images'] = stats.source_images
        if results is not None:
            payload['results'] = []
            for r in results:
                entry = {'image': r.reference, 'reference': r.reference, 'ok': r.ok, 'error': r.error,
                         'layers': r.layers, 'seconds': round(r.seconds, 3)}
                if r.outcome is not None:
                    entry.update(r.outcome.as_dict())
                # The same name as every other command's digest: the manifest (or index) at the destination.
                entry['digest'] = r.outcome.destination_digest if r.outcome is not None else None
                payload['results'].append(entry)
        if settings.dry_run:
            payload['dry_run'] = True
        click.echo(json.dumps(payload, indent=2))
        return
    if settings.quiet:
        return
    outcomes = [r for r in (results or []) if r.outcome is not None]
    if results is not None and (len(results) > 1 or outcomes):
        width = max(len(printable(r.reference)) for r in results)
        for r in results:
            state = _describe_outcome(r.outcome) if r.ok and r.outcome is not None else \
                'ok' if r.ok else 'FAILED: %s' % r.error
            click.echo('%-*s  %6.2fs  %s' % (width, printable(r.reference), r.seconds, printable(state)), err=True)
    if settings.dry_run:
        click.echo('dry run: nothing was written', err=True)
    unchanged = sum(1 for r in outcomes if r.outcome.state in ('unchanged', 'would be unchanged'))
    shard = ''
    if settings.shard is not None and stats.source_images is not None:
        shard = '; shard %s kept %d of %d images' % (settings.shard, len(results or []), stats.source_images)
    click.echo('done: %d image%s, %d layer%s, %s written, %s downloaded, %s uploaded in %.2f s%s%s%s'
               % (stats.images, '' if stats.images == 1 else 's', stats.layers, '' if stats.layers == 1 else 's',
                  human_bytes(stats.bytes), human_bytes(stats.downloaded), human_bytes(stats.uploaded),
                  stats.seconds, ', %d unchanged' % unchanged if unchanged else '',
                  ', %d failed' % len(failed) if failed else '', shard), err=True)


def _short_digest(digest):
    return digest[:19] if digest else '-'


def _describe_outcome(outcome):
    """One image's line of the summary: what happened, the digests, platforms, and the blob counts."""
    text = outcome.state
    if outcome.source_digest or outcome.destination_digest:
        text += ' %s -> %s' % (_short_digest(outcome.source_digest), _short_digest(outcome.destination_digest))
    if outcome.platforms:
        text += ' [%s]' % ', '.join(outcome.platforms)
    if outcome.blobs_to_send is not None:
        from occystrap.progress import human_bytes
        text += ', %d blob%s to send (%s)' % (outcome.blobs_to_send, '' if outcome.blobs_to_send == 1 else 's',
                                              human_bytes(outcome.bytes_to_send or 0))
    elif outcome.state == 'copied' and outcome.manifests:
        text += ', %d manifest%s, %d uploaded, %d mounted, %d present' % (
            outcome.manifests, '' if outcome.manifests == 1 else 's', outcome.uploaded, outcome.mounted,
            outcome.present)
    if outcome.referrers:
        text += ', %d referrer%s %s' % (outcome.referrers, '' if outcome.referrers == 1 else 's',
                                        'to copy' if outcome.blobs_to_send is not None or 'would' in outcome.state
                                        else 'copied')
    if outcome.changed:
        text += '; digest changed: %s' % outcome.changed
    return text


@cli.command()
@click.argument('source')
@click.argument('destination')
@click.option('-f', '--filter', 'filters', multiple=True, metavar='FILTER',
              help='Filter to apply, NAME or NAME:key=value,...; repeat to chain (applied in order).')
@click.pass_obj
def process(settings, source, destination, filters):
    """Copy images from SOURCE to DESTINATION through optional filters."""
    from occystrap import pipeline, uris
    _note_source(source)
    _note_source(destination)
    src = uris.parse_uri(source, 'input')
    dst = uris.parse_uri(destination, 'output')
    specs = [uris.parse_filter(f, pipeline.FILTERS) for f in filters]
    from occystrap.progress import Progress
    with _running(settings) as ctx:
        with Progress(ctx.stats, settings.progress):
            results = pipeline.run_process(src, dst, specs, ctx)
    _summary(settings, ctx.stats, results)
    if any(not r.ok for r in results):
        sys.exit(1)


@cli.command()
@click.argument('source')
@click.pass_obj
def info(settings, source):
    """Describe the images SOURCE names: manifest, config and layers."""
    from occystrap import reports, uris
    _note_source(source)
    with _running(settings) as ctx:
        ok = reports.info(uris.parse_uri(source, 'input'), ctx)
    if not ok:
        sys.exit(1)


@cli.command()
@click.argument('source')
@click.argument('pattern')
@click.option('--regex', is_flag=True, help='PATTERN is a regular expression, not a glob.')
@click.option('--script-friendly', is_flag=True, help='Print IMAGE:TAG:LAYER:PATH lines only.')
@click.pass_obj
def search(settings, source, pattern, regex, script_friendly):
    """List files in the layers of SOURCE whose path matches PATTERN."""
    from occystrap import reports, uris
    _note_source(source)
    with _running(settings) as ctx:
        ok = reports.search(uris.parse_uri(source, 'input'), pattern, regex, script_friendly, ctx)
    if not ok:
        sys.exit(1)


@cli.command()
@click.argument('source')
@click.option('--fast', is_flag=True, help='Check manifests and configs only, not layer data.')
@click.pass_obj
def check(settings, source, fast):
    """Verify the images SOURCE names: digests, diffids and config consistency."""
    from occystrap import reports, uris
    _note_source(source)
    with _running(settings) as ctx:
        ok = reports.check(uris.parse_uri(source, 'input'), fast, ctx)
    if not ok:
        sys.exit(1)


def _source_command(name, help_text, extra=()):
    """A small read-only command over one SOURCE (tags, digest, manifest, config)."""
    def decorate(fn):
        @click.argument('source')
        @click.pass_obj
        def command(settings, source, **options):
            from occystrap import uris
            _note_source(source)
            with _running(settings) as ctx:
                fn(uris.parse_uri(source, 'input'), ctx, **options)
        command.__doc__ = help_text
        for option in reversed(extra):
            command = option(command)
        return cli.command(name=name)(command)
    return decorate


@_source_command('tags', 'Print every tag SOURCE holds (a tarball: its images\' references).')
def tags(uri, ctx):
    from occystrap import reports
    reports.tags(uri, ctx)


@_source_command('digest', 'Print the digest of what SOURCE names (an index: its own).')
def digest(uri, ctx):
    from occystrap import reports
    reports.digest(uri, ctx)


@_source_command('manifest', 'Print the manifest or index SOURCE names (--raw: exact bytes).',
                 extra=(click.option('--raw', is_flag=True, help='The exact bytes as stored, nothing added.'),))
def manifest(uri, ctx, raw):
    from occystrap import reports
    reports.manifest(uri, raw, ctx)


@_source_command('config', 'Print the exact config blob of the image SOURCE names.')
def config(uri, ctx):
    from occystrap import reports
    reports.config(uri, ctx)


def _option_table(group):
    """{option string: takes a value} for a command's options (--help and --version left out)."""
    table = {}
    for param in group.params:
        if isinstance(param, click.Option):
            for name in param.opts + param.secondary_opts:
                table[name] = not (param.is_flag or param.count)
    for name in ('-h', '--help', '--version'):
        table.pop(name, None)
    return table


def _split_option(token):
    """(option name, value attached) for '--name=value', '--name', '-jN', '-j'; (None, False) for the rest."""
    if token.startswith('--'):
        name, eq, _ = token.partition('=')
        return name, bool(eq)
    if token.startswith('-') and len(token) > 1:
        return token[:2], len(token) > 2
    return None, False


def hoist_global_options(group, args):
    """argv with the global options that follow the command moved in front of it, so that
    `occystrap info --insecure SOURCE` means `occystrap --insecure info SOURCE`.

    Options the command declares itself stay where they are, as does everything after `--`; a value-taking option
    at the very end (its value missing) is left for click to report.
    """
    globals_ = _option_table(group)
    index = 0
    while index < len(args):       # find the command, stepping over global options and their values
        name, attached = _split_option(args[index])
        if args[index] == '--' or (name is None and not args[index].startswith('-')):
            break
        index += 1 + (1 if globals_.get(name) and not attached else 0)
    if index >= len(args) or args[index] not in group.commands:
        return list(args)
    own = _option_table(group.commands[args[index]])
    before, after = list(args[:index]), [args[index]]
    position = index + 1
    while position < len(args):
        token = args[position]
        if token == '--':
            after.extend(args[position:])
            break
        name, attached = _split_option(token)
        if name in own:
            width = 1 + (1 if own[name] and not attached else 0)
            after.extend(args[position:position + width])
        elif name in globals_:
            width = 1 + (1 if globals_[name] and not attached else 0)
            if position + width > len(args):
                after.append(token)
            else:
                before.extend(args[position:position + width])
        else:
            width = 1
            after.append(token)
        position += width
    return before + after


def main(argv=None):
    """Entry point: runs the CLI, turning every known failure into one line on stderr and an exit status."""
    args = hoist_global_options(cli, sys.argv[1:] if argv is None else list(argv))
    debug = '--debug' in args or bool(os.environ.get('OCCYSTRAP_DEBUG'))
    del _hints[:]
    from occystrap import cancel
    previous = cancel.install()
    try:
        cli.main(args=args, prog_name='occystrap', standalone_mode=False)
    except cancel.Interrupted as e:
        click.echo('error: %s' % e, err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo('error: aborted', err=True)
        sys.exit(130)
    except click.ClickException as e:
        from occystrap.terminal import printable
        from occystrap.uris import redact
        click.echo('error: %s' % printable(redact(one_line(e.format_message()))), err=True)
        sys.exit(2)
    except UsageError as e:
        _fail(e, debug, 2)
    except OccystrapError as e:
        _fail(e, debug, e.exit_code)
    except KeyboardInterrupt:
        click.echo('error: interrupted', err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:  # a bug: say so in one line, traceback only when asked
        _fail(e, debug, 1, prefix='internal error: %s: ' % type(e).__name__)
    finally:
        cancel.restore(previous)
    sys.exit(0)


def run():
    """The `occystrap` command: main(), then exit without tearing the interpreter down.

    When main() returns, every output has been closed and renamed into place and every worker thread has finished;
    the teardown that would follow (freeing some 280 modules and their objects) only added about 0.08 s of CPU to
    every command (docs/performance.md, "Where the time goes"). Logging and the standard streams are flushed first.
    """
    _skip_unused_imports(sys.argv[1:])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write('%s\n' % code)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe: what we printed cannot be delivered
            code = code or 1
    os._exit(code)


def _skip_unused_imports(args):
    """Keep optional imports that httpx and httpcore try at import time out of a command that cannot use them.

    httpcore imports h2 (HTTP/2) when it is installed, ~25 ms, though only --http2 uses it, and anyio, ~15 ms,
    which only its async API uses; httpx imports its own command line when pygments happens to be installed (as in
    a development venv), ~12 ms. Each treats the module as absent when sys.modules says None. Only the `occystrap`
    command does this, never an importer of the package.
    """
    if '--http2' not in args and not os.environ.get('OCCYSTRAP_HTTP2') and 'h2' not in sys.modules:
        sys.modules['h2'] = None
    sys.modules.setdefault('anyio', None)
    sys.modules.setdefault('httpx._main', None)


def one_line(text):
    return ' '.join(str(text).split())


def _fail(error, debug, code, prefix=''):
    if debug:
        import traceback
        traceback.print_exc()
    from occystrap.terminal import printable
    from occystrap.uris import redact
    hint = ' (%s)' % _hints[0] if _hints else ''
    click.echo('error: %s%s' % (prefix, printable(redact(one_line('%s%s' % (error, hint))))), err=True)
    sys.exit(code)
