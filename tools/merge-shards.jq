# Merge the `-O json` summaries of the shards of one sharded run into one report (docs/scale.md):
#
#   jq -s -f tools/merge-shards.jq shard-*.json > report.json && jq -e .ok report.json > /dev/null
#
# Input: the summaries, slurped into one array (one object per shard, as `occystrap --shard I/N -O json process`
# prints it; a shard that died before printing simply has no object). Output: one object with the sums of the
# shards' counters, every image's result sorted by image, and what makes the run incomplete:
#   missing_shards     indexes in 0..N-1 that sent no summary (a crashed pod, a lost artifact)
#   duplicate_shards   indexes that sent more than one summary (two runs' results mixed together)
#   duplicate_images   images that more than one shard processed (never happens within one N)
#   unsharded          summaries without a "shard" (a run without --shard mixed in)
#   counts_of_shards   every N the summaries name (more than one is an error: shards of different fleets)
#   source_images      how many images the source named, as each shard listed it; differing values mean the
#                      listing changed while the shards started (a repository added or removed): not an error,
#                      the next run picks it up
# `seconds` is the slowest shard's (shards run side by side); `ok` is true and `exit_status` 0 only when every
# shard reported once, all under one N, and no image failed.

def sum_of(key): map(.[key] // 0) | add // 0;

# Add numeric fields of objects key by key (the push counters).
def add_counts: reduce .[] as $o ({}; reduce ($o | to_entries[]) as $e (.; .[$e.key] += $e.value));

. as $summaries
| [$summaries[] | select(has("shard") | not)] as $unsharded
| [$summaries[] | select(has("shard")) | .shard | split("/") | map(tonumber)] as $shards
| ($shards | map(.[1]) | unique) as $counts
| ($shards | map(.[0])) as $indexes
| (if ($counts | length) == 1 then $counts[0] else null end) as $n
| ([$summaries[].results // [] | .[]] | sort_by(.image)) as $results
| ($results | group_by(.image) | map(select(length > 1) | .[0].image)) as $duplicate_images
| {
    shards: ($shards | length),
    of: $n,
    missing_shards: (if $n == null then [] else [range(0; $n)] - $indexes end),
    duplicate_shards: ($indexes | group_by(.) | map(select(length > 1) | .[0])),
    duplicate_images: $duplicate_images,
    unsharded: ($unsharded | length),
    counts_of_shards: $counts,
    source_images: ($summaries | map(.source_images // empty) | unique),
    images: ($summaries | sum_of("images")),
    layers: ($summaries | sum_of("layers")),
    bytes: ($summaries | sum_of("bytes")),
    downloaded: ($summaries | sum_of("downloaded")),
    failed: ($summaries | sum_of("failed")),
    seconds: ($summaries | map(.seconds // 0) | max // 0),
    push: ([$summaries[].push // empty] | if length > 0 then add_counts else null end),
    results: $results
  }
| .ok = (.shards > 0 and $n != null and .missing_shards == [] and .duplicate_shards == []
         and .duplicate_images == [] and .unsharded == 0 and .failed == 0)
| .exit_status = (if .ok then 0 else 1 end)
