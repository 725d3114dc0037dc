"""How one reference of a `process` run is copied: a whole index, a platform of it, a subset, or one image.

The input resolves a reference once (`resolve(ref)`: a manifest or an index, exact bytes); the Copier decides:

- an index, no platform asked, an output that holds indexes: the index, every child (attestations and artifacts
  too) and every blob, the index last, byte for byte (`write_index`): the destination digest is the source's;
- one platform asked: that child's manifest, unchanged, under the tag (its own digest);
- several platforms: a new index of those children (its digest changes, and the outcome says so);
- filters or an asked-for recompression: each platform's image is rewritten, pushed by digest, and a new index
  of them goes under the tag;
- an output holding one image: the one platform asked (default linux/amd64) goes through `write()` as before.

Before copying, the destination is asked for the tag (one HEAD): when it already holds the digest this copy would
write, nothing else is requested and the image is 'unchanged'. When the source's listing already named the tag's
digest (a catalog glob checks each tag with a HEAD), not even the source manifest is fetched for such an image.
--dry-run stops before the first write and counts what would be sent; --preserve-digests refuses, before writing,
any copy whose digest would change.

With --referrers, what refers to each manifest that arrives with its digest unchanged (the image, an index and its
children; not a rewritten or filtered one) is copied after it, unchanged images included (occystrap/referrers.py).
"""

import contextlib
import logging

from occystrap import oci, referrers
from occystrap.errors import OccystrapError, UsageError
from occystrap.pipeline import Outcome

LOG = logging.getLogger(__name__)


def _not_an_image(descriptor):
    """Index entries that are no platform's image: attestations ('unknown/unknown') and artifacts."""
    platform = descriptor.platform
    return platform is None or platform.os in ('', 'unknown') or platform.architecture in ('', 'unknown')


class Copier:
    """Copies references from one input through the filters to one output (None with --dry-run of an output
    that would write files)."""

    def __init__(self, source, output, filters, ctx, guard=contextlib.nullcontext):
        self.source = source
        self.guard = guard        # a context around writes to a file destination (pipeline.writing: a full disk)
        self.output = output
        self.filters = filters
        self.ctx = ctx
        self.settings = ctx.settings
        self.holds = bool(getattr(output, 'holds_indexes', False)) if output is not None else False
        platforms = self.settings.platforms
        options = getattr(getattr(source, 'uri', None), 'options', None) or {}
        if platforms is None and any(options.get(k) for k in ('os', 'arch', 'architecture', 'variant')):
            # The source URI's own os=/arch=/variant= name one platform, as --platform would.
            platforms = (str(self._default_platform()),)
        self.every = platforms is None or platforms == ('all',)
        self.wanted = [] if self.every else [oci.Platform.parse(p) for p in platforms]
        # Anything that rewrites layers or configs changes digests: filters, or --compression given to an output
        # that recompresses (an OCI layout stores layers as they came).
        self.recompresses = getattr(output, 'recompresses', True)
        self.rewrites = bool(filters) or (self.settings.recompress and self.recompresses)
        self._asked = {}          # str(ref) -> the digest the destination answered for it, while it is copied

    # --- entry

    def copy(self, ref):
        """Copy one reference; returns an Outcome (or the layer count for inputs that know no index)."""
        resolve = getattr(self.source, 'resolve', None)
        if resolve is None:
            return self._plain(ref)
        try:
            listed = self._listed_unchanged(ref)
            if listed is not None:
                return listed
            return self._copy(ref, resolve(ref))
        finally:
            self._asked.pop(str(ref), None)

    def _copy(self, ref, resolved):
        if not resolved.is_index:
            return self._manifest(ref, resolved)
        if not self.holds:
            return self._one_platform_image(ref, resolved)
        if self.every:
            children = list(resolved.document.manifests)
        else:
            children = self._select(ref, resolved)
        if self.rewrites:
            return self._rebuilt(ref, resolved, children)
        if not self.every and len(children) == 1:
            return self._faithful(ref, resolved, children, tag_child=True)
        return self._faithful(ref, resolved, children)

    def _listed_unchanged(self, ref):
        """'unchanged' without fetching the manifest, when the source's listing already named the tag's digest
        (a catalog glob checks each tag with a HEAD), the destination holds that digest, and the whole of it
        would be copied as it is (every platform, no filter, no recompression); else None. --referrers needs the
        manifest (an index's children have referrers of their own), so it always takes the ordinary path."""
        listed = getattr(self.source, 'listed_digest', None)
        if listed is None or not self.holds or not self.every or self.rewrites or self.settings.referrers:
            return None
        digest = listed(ref)
        if digest is None or not self._unchanged(ref, digest):
            return None
        return Outcome('would be unchanged' if self.settings.dry_run else 'unchanged', source_digest=digest,
                       destination_digest=digest, destination=self.output.target(ref))

    # --- choosing platforms

    def _default_platform(self):
        chosen = getattr(self.source, 'platform', None)
        if isinstance(chosen, tuple):
            os_name, architecture, variant = chosen
        else:
            os_name, architecture, variant = self.settings.os, self.settings.architecture, self.settings.variant
        return oci.Platform(os_name, architecture, variant or '')

    def _select(self, ref, resolved):
        index = resolved.document
        chosen = []
        for platform in self.wanted:
            entry = index.select(platform)
            if entry is None:
                raise OccystrapError('%s has no %s image; available: %s'
                                     % (oci.shown(str(ref)), platform, ', '.join(index.platforms()) or 'none'))
            if entry not in chosen:
                chosen.append(entry)
        return chosen

    # --- outputs holding one image

    def _one_platform_image(self, ref, resolved):
        if self.settings.platforms == ('all',) or len(self.wanted) > 1:
            raise UsageError('the destination holds one image: give one --platform, not several or all')
        platform = self.wanted[0] if self.wanted else self._default_platform()
        entry = resolved.document.select(platform)
        if entry is None:
            raise OccystrapError('%s has no %s image; available: %s'
                                 % (oci.shown(str(ref)), platform,
                                    ', '.join(resolved.document.platforms()) or 'none'))
        LOG.info('%s: writing platform %s of the index', ref, entry.platform)
        if self.settings.dry_run:
            child = self.source.copy_child(ref, entry)
            return self._dry(ref, resolved.digest, [str(entry.platform)], child.blobs[1:], None,
                             changed='one platform of an index')
        image = self.source.open(ref, resolved, child=entry)
        self._write(image)
        self.ctx.stats.add(images=1, layers=len(image.layers))
        return Outcome('copied', source_digest=resolved.digest, platforms=[str(entry.platform)],
                       layers=len(image.layers))

    def _plain(self, ref):
        """Inputs that do not resolve references (tarballs, engines): one image through write(), as always."""
        if self.settings.dry_run:
            image = self.source.open(ref)
            sizes = [layer.origin.size if layer.origin is not None and layer.origin.size is not None
                     else layer.size for layer in image.layers]
            return Outcome('would copy', source_digest=image.manifest_digest, platforms=[image.platform],
                           layers=len(image.layers), blobs_to_send=len(image.layers) + 1,
                           bytes_to_send=sum(sizes) + len(image.config_bytes))
        image = self.source.open(ref)
        written = self._write(image)
        self.ctx.stats.add(images=1, layers=len(image.layers))
        if not self.holds:
            return len(image.layers)     # a file destination: the summary says 'ok', as it always has
        return self._written_outcome(ref, image.manifest_digest, written, [image.platform], len(image.layers))

    # --- one image manifest

    def _manifest(self, ref, resolved):
        manifest = resolved.document
        if not self.holds:
            if self.settings.dry_run:
                return self._dry(ref, resolved.digest, [], manifest.layers, None)
            image = self.source.open(ref, resolved)
            self._write(image)
            self.ctx.stats.add(images=1, layers=len(image.layers))
            return len(image.layers)     # one image to a file destination: the summary says 'ok', as it always has
        # The existing push keeps the manifest's bytes only when every layer is already in the asked compression.
        keeps = not self.filters and (not self.recompresses
                                      or all(d.compression == self.settings.compression for d in manifest.layers))
        changed = None if keeps else ('filtered' if self.filters else 'recompressed to %s' % self.settings.compression)
        target = resolved.digest
        if keeps and not self._output_keeps(manifest.media_type):
            # Stored in another form (a Docker manifest in an OCI layout is made OCI): a known, other digest.
            target, changed = self.output.stored_manifest(manifest).digest, 'converted to OCI'
        self._refuse_change(ref, changed)
        kept = [resolved.digest] if keeps and target == resolved.digest else []
        if keeps and self._unchanged(ref, target):
            return self._referrers(ref, kept, Outcome(
                'would be unchanged' if self.settings.dry_run else 'unchanged', source_digest=resolved.digest,
                destination_digest=target, destination=self.output.target(ref), layers=len(manifest.layers),
                changed=changed))
        if self.settings.dry_run:
            blobs = self._manifest_blobs(ref, manifest)
            return self._referrers(ref, kept, self._dry(ref, resolved.digest, [], blobs,
                                                        self.output.missing_blobs(ref, blobs), changed=changed))
        image = self.source.open(ref, resolved)
        written = self._write(image)
        self.ctx.stats.add(images=1, layers=len(image.layers))
        outcome = self._written_outcome(ref, resolved.digest, written, [image.platform], len(image.layers),
                                        changed=changed if target != resolved.digest else None)
        return self._referrers(ref, [resolved.digest] if outcome.changed is None else [], outcome)

    @staticmethod
    def _manifest_blobs(ref, manifest):
        """The config and layers a manifest names, as descriptors (digest and size are all --dry-run needs)."""
        return [manifest.config] + list(manifest.layers)

    # --- indexes

    def _faithful(self, ref, resolved, children, tag_child=False):
        """The index (or a subset of its children, or one child) copied as stored."""
        source_digest = resolved.digest
        if tag_child:
            # What is copied is that child's manifest: its digest is the source digest that must be kept.
            source_digest = target_digest = children[0].digest
            changed = None
            platforms = [str(children[0].platform)]
        elif len(children) == len(resolved.document.manifests):
            target_digest, changed = resolved.digest, None
            platforms = resolved.document.platforms()
        else:
            built = oci.Index.build(children, resolved.document.media_type, resolved.document.annotations)
            target_digest, changed = built.digest, 'new index of %d platforms' % len(children)
            platforms = [str(d.platform) for d in children]
        copy = None
        if not self._output_keeps(children[0].media_type if tag_child else resolved.document.media_type):
            # The output stores it in another form (a Docker list or manifest in an OCI layout is made OCI): its
            # digest there is known once the children are fetched (small requests; no blob is read).
            copy = self._copy_index(ref, resolved, children, built if changed is not None else None)
            stored, _ = self.output.stored_form(copy, tag_child)
            target_digest = stored.children[0].digest if tag_child else stored.digest
            changed = '%s, converted to OCI' % changed if changed else 'converted to OCI'
        self._refuse_change(ref, changed)
        # What keeps its digest: every child copied, and the index itself unless a subset makes a new one.
        kept = [d.digest for d in children] + ([resolved.digest] if not tag_child and changed is None else [])
        if self._unchanged(ref, target_digest):
            return self._referrers(ref, kept, Outcome(
                'would be unchanged' if self.settings.dry_run else 'unchanged', source_digest=source_digest,
                destination_digest=target_digest, destination=self.output.target(ref), platforms=platforms,
                changed=changed))
        if copy is None:
            copy = self._copy_index(ref, resolved, children, built if changed is not None else None)
        if self.settings.dry_run:
            return self._referrers(ref, kept, self._dry(ref, source_digest, platforms, copy.blobs,
                                                        self.output.missing_blobs(ref, copy.blobs), changed=changed,
                                                        destination_digest=target_digest))
        written = self.output.write_index(copy, tag_child=tag_child)
        layers = sum(max(0, len(child.blobs) - 1) for child in copy.children)
        self.ctx.stats.add(images=1, layers=layers)
        return self._referrers(ref, kept, self._written_outcome(ref, source_digest, written, platforms, layers,
                                                                changed=changed))

    def _copy_index(self, ref, resolved, children, built):
        copy = self.source.copy_index(ref, resolved, children)
        if built is not None:
            copy.index = built
        return copy

    def _output_keeps(self, media_type):
        """False when the output stores manifests of `media_type` in another form (see outputs/ocidir.py)."""
        keeps = getattr(self.output, 'keeps_manifest', None)
        return keeps is None or keeps(media_type)

    def _rebuilt(self, ref, resolved, children):
        """Filters or recompression on an index: each platform's image rewritten, then a new index of them."""
        images = [d for d in children if not _not_an_image(d)]
        dropped = len(children) - len(images)
        changed = 'filtered' if self.filters else 'recompressed to %s' % self.settings.compression
        self._refuse_change(ref, changed)
        platforms = [str(d.platform) for d in images]
        if self.settings.dry_run:
            blobs = []
            for entry in images:
                blobs.extend(self.source.copy_child(ref, entry).blobs)
            return self._dry(ref, resolved.digest, platforms, blobs, None, changed=changed)
        if dropped:
            LOG.info('%s: %d entries that are not images (attestations) are left out of the rewritten index',
                     ref, dropped)
        if self.settings.referrers:
            LOG.warning('%s: referrers are not copied: every digest of the rewritten index changes', ref)
        descriptors, counters, layers = [], [], 0
        for entry in images:
            image = self.source.open(ref, resolved, child=entry)
            written = self.output.write_child(image)
            layers += len(image.layers)
            descriptor = written.descriptor
            descriptors.append(oci.Descriptor(descriptor.media_type, descriptor.digest, descriptor.size,
                                              entry.platform))
            counters.append(written.counters)
        media_type = oci.MEDIA_OCI_INDEX if any(d.media_type == oci.MEDIA_OCI_MANIFEST for d in descriptors) \
            else resolved.document.media_type
        built = oci.Index.build(descriptors, media_type,
                                resolved.document.annotations if media_type == oci.MEDIA_OCI_INDEX else None)
        total = None
        for c in counters:
            if c is None:
                continue
            if total is None:
                total = type(c)()
            total.add(c)
        written = self.output.put_index(ref, built, total)
        self.ctx.stats.add(images=1, layers=layers)
        return self._written_outcome(ref, resolved.digest, written, platforms, layers, changed=changed)

    # --- shared

    def _referrers(self, ref, digests, outcome):
        """`outcome` with what refers to `digests` (manifests that keep their digest) copied, with --referrers."""
        if not self.settings.referrers:
            return outcome
        if not digests:
            LOG.warning('%s: referrers are not copied: the manifest is rewritten (%s)', ref,
                        outcome.changed or 'a new digest')
            return outcome
        outcome.referrers = referrers.copy(self.source, self.output, ref, digests, self.ctx.cancellation,
                                           dry_run=self.settings.dry_run)
        return outcome

    def _write(self, image):
        self.ctx.stats.track(image)     # the progress display's layer count and announced size for this image
        with self.guard():
            return self.output.write(image)

    def _refuse_change(self, ref, changed):
        if changed is not None and self.settings.preserve_digests:
            raise OccystrapError('%s would get a new digest at the destination (%s) and --preserve-digests is set;'
                                 ' nothing was written' % (oci.shown(str(ref)), changed))

    def _unchanged(self, ref, digest):
        """True when the destination already holds `digest` under the reference's destination tag (one HEAD)."""
        key = str(ref)
        if key not in self._asked:     # one HEAD per reference, however many times the copy asks
            self._asked[key] = self.output.existing_digest(ref)
        present = self._asked[key]
        return present is not None and present == digest

    def _dry(self, ref, source_digest, platforms, blobs, missing, changed=None, destination_digest=None):
        send = blobs if missing is None else missing
        sizes = [getattr(b, 'size', None) or 0 for b in send]
        LOG.info('%s: would copy %d blobs (%d bytes)', ref, len(send), sum(sizes))
        return Outcome('would copy', source_digest=source_digest, destination_digest=destination_digest,
                       destination=self.output.target(ref) if self.output is not None else None,
                       platforms=platforms, changed=changed, blobs_to_send=len(send), bytes_to_send=sum(sizes))

    def _written_outcome(self, ref, source_digest, written, platforms, layers, changed=None):
        destination_digest = str(written) if written is not None else None
        if changed is None and destination_digest and source_digest and destination_digest != source_digest:
            changed = 'manifest rewritten'
        counters = getattr(written, 'counters', None)
        outcome = Outcome('copied', source_digest=source_digest, destination_digest=destination_digest,
                          destination=self.output.target(ref) if hasattr(self.output, 'target') else None,
                          platforms=[p for p in platforms if p], changed=changed, layers=layers)
        if counters is not None:
            outcome.manifests, outcome.uploaded = counters.manifests, counters.uploaded
            outcome.mounted, outcome.present = counters.mounted, counters.present
        return outcome
