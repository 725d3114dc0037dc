"""`--shard I/N`: which images of a multi-image source one of N cooperating runs keeps.

Images are assigned by repository with rendezvous (highest random weight) hashing: shard s's weight for a repository
is sha256(repository + '\\0' + str(s)), and the shard with the greatest weight owns it. So every tag of a repository
(and the layers they share) lands in one shard, the owner of a repository depends on nothing but its name and N
(adding or removing a repository moves no other), and going from N to N+1 shards moves only the repositories the new
shard wins. sha256 rather than hash(): the assignment must be the same in every process, machine and version.
"""

import dataclasses
import hashlib
import re

MAX_SHARDS = 100000         # the Kubernetes limit on completions of an Indexed Job
_SHARD_RE = re.compile(r'([0-9]{1,6})/([0-9]{1,6})')


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard `index` (0-based, as Kubernetes' JOB_COMPLETION_INDEX) of `count`."""

    index: int
    count: int

    def __str__(self):
        return '%d/%d' % (self.index, self.count)

    def keeps(self, repository):
        """True when this shard owns `repository`."""
        return in_shard(repository, self.index, self.count)


def parse_shard(text):
    """The Shard that 'I/N' names; ValueError (with a message naming what is wrong) for anything else."""
    match = _SHARD_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError('must be I/N with 0 <= I < N <= %d, e.g. 0/4, not %r' % (MAX_SHARDS, str(text)[:40]))
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError('N in I/N must be 1 to %d, not %d' % (MAX_SHARDS, count))
    if index >= count:
        raise ValueError('I in I/N counts from 0 and must be below N=%d, not %d' % (count, index))
    return Shard(index, count)


def _weights(repository):
    """A function giving shard s's weight (a sha256 digest, compared as bytes) for `repository`."""
    prefix = hashlib.sha256(repository.encode('utf-8', 'surrogatepass') + b'\0')

    def weight(shard):
        h = prefix.copy()
        h.update(b'%d' % shard)
        return h.digest()
    return weight


def owner(repository, count):
    """The shard (0..count-1) that owns `repository`: the greatest weight, the lowest index on a (never seen) tie."""
    weight = _weights(repository)
    best, best_weight = 0, weight(0)
    for shard in range(1, count):
        w = weight(shard)
        if w > best_weight:
            best, best_weight = shard, w
    return best


def in_shard(repository, index, count):
    """True when shard `index` of `count` owns `repository` (what owner() says, without always computing N weights).

    The scan stops at the first shard that outweighs `index`: for a repository another shard owns that takes about
    ln(N) hashes on average, so a shard of a large fleet does not cost repositories x N hashes.
    """
    weight = _weights(repository)
    mine = weight(index)
    for shard in range(count):
        if shard == index:
            continue
        w = weight(shard)
        if w > mine or (w == mine and shard < index):
            return False
    return True


def select(refs, shard):
    """The references whose repository (`ref.name`) this shard owns, in their original order."""
    owned = {}
    kept = []
    for ref in refs:
        if ref.name not in owned:
            owned[ref.name] = shard.keeps(ref.name)
        if owned[ref.name]:
            kept.append(ref)
    return kept
