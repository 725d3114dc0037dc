"""--referrers: with each manifest a mirror copies, what refers to it, digests unchanged.

Two forms are found at the source, for every manifest whose digest arrives unchanged (an image, an index and each
of its children):

- OCI 1.1 referrers: the referrers API (`GET /v2/<name>/referrers/<digest>`) where the registry answers it, else
  the index under the referrers tag schema's tag `sha256-<hex>` (a 404 from the API says the registry has none);
- cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom`.

Referrers can have referrers (a signature of an SBOM): the walk goes MAX_DEPTH levels below the image (what refers
to the last level is not asked for) and refuses more than MAX_REFERRERS manifests per image, whatever a server
lists. Every referrer is fetched by digest (so verified) and must name the manifest it was listed for as its
`subject`.

At the destination a referrer is skipped when it is there already (one HEAD by digest; a cosign tag when it names
the same digest), else its blobs and manifest are written: `RegistryOutput.write_referrer` puts it by digest and
keeps the referrers tag schema's index current where the registry has no referrers API; cosign's tags are written
under the same tag. With --dry-run the referrers are found and counted, and nothing is written.
"""

import dataclasses
import logging
from typing import Optional

from occystrap import oci
from occystrap.errors import CorruptImageError, OccystrapError

LOG = logging.getLogger(__name__)

MAX_DEPTH = 4             # referrers of referrers, this many levels below the image
MAX_REFERRERS = 1000      # manifests found for one image before its source is thought hostile


@dataclasses.dataclass
class Referrer:
    """One manifest to copy: its digest and either the subject it refers to (an OCI 1.1 referrer) or its tag."""

    digest: str
    subject: Optional[str] = None
    tag: Optional[str] = None


def supported(source, output):
    """None when --referrers can work between `source` (an input) and `output` (an output or its class), else the
    reason it cannot."""
    if not hasattr(source, 'referrers'):
        return '--referrers needs a registry:// source'
    if not hasattr(output, 'write_referrer'):
        return '--referrers needs a registry:// destination'
    return None


def find(source, ref, digests, cancellation):
    """[Referrer] of everything that refers to `digests` (and to what refers to them), parents before children."""
    seen = set(digests)
    found = []
    level = list(digests)
    for depth in range(MAX_DEPTH):
        following = []
        for subject in level:
            cancellation.check()
            for descriptor in source.referrers(ref, subject, MAX_REFERRERS):
                if descriptor.digest in seen:
                    continue
                seen.add(descriptor.digest)
                if descriptor.media_type in oci.MANIFEST_LIST_TYPES:
                    LOG.warning('%s: referrer %s of %s is an index; indexes are not copied as referrers', ref,
                                descriptor.digest, subject)
                    continue
                found.append(Referrer(descriptor.digest, subject=subject))
                following.append(descriptor.digest)
                _bounded(ref, found)
            for tag, digest in source.cosign_tags(ref, subject):
                found.append(Referrer(digest, tag=tag))
                _bounded(ref, found)
                if digest not in seen:
                    seen.add(digest)
                    following.append(digest)
        level = following
        if not level:
            break
    else:
        if level:
            LOG.info('%s: what refers to the referrers %d levels below the image is not looked for', ref, MAX_DEPTH)
    return found


def _bounded(ref, found):
    if len(found) > MAX_REFERRERS:
        raise OccystrapError('%s has more than %d referrers at its source; refusing to copy them'
                             % (oci.shown(str(ref)), MAX_REFERRERS))


def copy(source, output, ref, digests, cancellation, dry_run=False):
    """Copy (or with `dry_run` count) what refers to `digests` that the destination lacks; returns that count.
    `cancellation` is the run's (RunContext.cancellation), checked between manifests."""
    count = 0
    for referrer in find(source, ref, digests, cancellation):
        cancellation.check()
        if referrer.tag is not None:
            if output.tag_digest(ref, referrer.tag) == referrer.digest:
                continue
        elif output.has_manifest(ref, referrer.digest):
            continue
        count += 1
        if dry_run:
            continue
        manifest_copy, document = source.fetch_referrer(ref, referrer.digest)
        if referrer.tag is not None:
            output.write_tagged(ref, manifest_copy, referrer.tag)
            continue
        subject = document.subject
        if subject is None or subject.digest != referrer.subject:
            raise CorruptImageError('the source lists %s as a referrer of %s, but its subject is %s'
                                    % (referrer.digest, referrer.subject,
                                       subject.digest if subject is not None else 'missing'))
        output.write_referrer(ref, manifest_copy, referrer.subject,
                              oci.referrer_descriptor(document, manifest_copy.media_type))
    if count:
        LOG.info('%s: %s %d referrer%s', ref, 'would copy' if dry_run else 'copied', count, '' if count == 1 else 's')
    return count
