# Result shaping for tools/benchmark.sh: hyperfine exports -> rows -> JSON array or TSV.
# Use as a jq library: jq -L tools 'include "bench"; ...'.
#
# A row: tool workflow [image] j J [repos] runs mean_s stddev_s min_s max_s peak_rss_mb mb_per_s [throttled]
# [baseline_mean_s ratio] status (+ "error" in JSON when the cell failed). image (the remote-* workflows' source),
# repos (the memory curve's repository count) and throttled (429 answers per run, remote-* workflows) are
# columns only when some row has them. Times are seconds, peak_rss_mb is MiB, mb_per_s is 10^6 bytes of
# compressed image moved per second of mean time. Unknown or not applicable values are null ("-" in TSV).

def round_to($places): if . == null then null else (. * pow(10; $places) | round) / pow(10; $places) end;

def base_columns:
  ["tool", "workflow", "j", "J", "runs", "mean_s", "stddev_s", "min_s", "max_s", "peak_rss_mb", "mb_per_s"];

# Input: a cell from tools/bench_plan.py. $hyperfine: hyperfine's --export-json document or null; $rss: the
# tools/peakrss.py result or null; $error: null, or why the cell failed. A cell marked "once" (the memory curve)
# is not timed by hyperfine: its one run under peakrss.py is its time.
def row($hyperfine; $rss; $error):
  (if $hyperfine == null and .once == true and $error == null and $rss != null
   then {mean: $rss.wall_s, stddev: null, min: $rss.wall_s, max: $rss.wall_s, times: [$rss.wall_s]}
   else ($hyperfine.results[0] // null) end) as $r
  | {tool, workflow}
  + (if has("image") then {image} else {} end)
  + {j, J}
  + (if has("repos") then {repos} else {} end)
  + {runs: (if $r == null then 0 else ($r.times | length) end),
     mean_s: ($r.mean | round_to(4)),
     stddev_s: ($r.stddev | round_to(4)),
     min_s: ($r.min | round_to(4)),
     max_s: ($r.max | round_to(4)),
     peak_rss_mb: (if ($rss.peak_rss_kb // 0) > 0 then $rss.peak_rss_kb / 1024 | round_to(1) else null end),
     mb_per_s: (if .bytes != null and ($r.mean // 0) > 0 then .bytes / 1000000 / $r.mean | round_to(1)
                else null end)}
  + (if has("throttled") then {throttled} else {} end)
  + {status: (if $error == null then "ok" else "failed" end)}
  + (if $error == null then {} else {error: $error} end);

def cell_key: "\(.workflow)|\(.image)|\(.j)|\(.J)|\(.repos)";

# Input: an array of rows. When baseline rows exist, every occystrap row gets the baseline's mean for the same
# workflow, j and J, and ratio = ours / baseline (below 1: we are faster).
def with_baseline:
  (map(select(.tool == "baseline") | {key: cell_key, value: .mean_s}) | from_entries) as $base
  | if any(.[]; .tool == "baseline") | not then .
    else map(
      (if (.tool | startswith("occystrap")) and (.tool != "occystrap-0.4.17") then $base[cell_key] else null end)
        as $m
      | . + {baseline_mean_s: $m,
             ratio: (if $m != null and $m > 0 and .mean_s != null then .mean_s / $m | round_to(3) else null end)})
    end;

# The columns of an array of rows, in order.
def columns:
  . as $rows
  | def some($k): any($rows[]; has($k));
  ["tool", "workflow"] + (if some("image") then ["image"] else [] end) + ["j", "J"]
  + (if some("repos") then ["repos"] else [] end)
  + (base_columns - ["tool", "workflow", "j", "J"])
  + (if some("throttled") then ["throttled"] else [] end)
  + (if some("baseline_mean_s") then ["baseline_mean_s", "ratio"] else [] end) + ["status"];

# Input: an array of rows; output: the same rows with keys in column order (error last, when present).
def ordered:
  columns as $c
  | map(. as $row
        | (reduce $c[] as $k ({}; .[$k] = $row[$k]))
          + (if $row.error == null then {} else {error: $row.error} end));

# Input: an array of rows; output: TSV lines (header first), null as "-", for `jq -r` and `column -t`.
def tsv:
  columns as $c
  | ($c | @tsv),
    (.[] | . as $row | [$c[] | $row[.] | if . == null then "-" else tostring end] | @tsv);
