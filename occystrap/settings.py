"""Global options of a run, as one value passed everywhere instead of scattered constants."""

import dataclasses
from typing import Optional, Tuple

from occystrap.main import DEFAULT_IMAGE_PARALLEL, DEFAULT_PARALLEL, DEFAULT_RETRIES


@dataclasses.dataclass
class Settings:
    """Everything the global command line options say; every field has a safe default."""

    parallel: int = DEFAULT_PARALLEL
    image_parallel: int = DEFAULT_IMAGE_PARALLEL
    rate_limit: Optional[float] = None
    retries: int = DEFAULT_RETRIES
    username: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    # --src-creds / --dest-creds (USER, PASS), for source registries and the destination registry.
    src_creds: Optional[Tuple[str, str]] = dataclasses.field(default=None, repr=False)
    dest_creds: Optional[Tuple[str, str]] = dataclasses.field(default=None, repr=False)
    authfile: Optional[str] = None                  # --authfile: read first among the credential files
    insecure: bool = False
    ca_cert: Optional[str] = None
    http2: bool = False
    compression: str = 'gzip'
    os: str = 'linux'
    architecture: str = 'amd64'
    variant: Optional[str] = None
    # The platforms asked for (--platform, or --os/--architecture/--variant given explicitly): None when none was,
    # ('all',) for every one, else 'os/arch[/variant]' strings. os/architecture/variant above are the one an output
    # holding a single image picks.
    platforms: Optional[tuple] = None
    recompress: bool = False          # --compression was given: layers in another compression are recompressed
    dry_run: bool = False
    preserve_digests: bool = False
    referrers: bool = False           # --referrers: copy what refers to each manifest (signatures, SBOMs)
    temp_dir: Optional[str] = None
    layer_cache: Optional[str] = None
    output_format: str = 'text'
    verbose: bool = False
    debug: bool = False
    progress: bool = False      # draw the progress display (a terminal, or --progress)
    quiet: bool = False         # --quiet: no progress display and no summary line
    allow_devices: bool = False
    shard: Optional[object] = None      # a sharding.Shard with --shard I/N: keep only that share of the images
    max_extract_bytes: Optional[int] = None   # bytes extraction may write in one run (--max-extract-bytes)
    stats_file: Optional[str] = None    # --stats-file: the run's counters as JSON, written at the end
