#!/usr/bin/env bash
# Where a command's CPU goes, per thread: user space (by object: the program, libc, vdso)
# and kernel time by the system call or interrupt it was spent under. Used for the CPU
# analysis in BENCHMARKS.md (the load generator's threads are `a` publishing, `r0`, `r1`
# receiving).
#
#   scripts/cpu-breakdown.sh [-t THREAD_REGEX] -- COMMAND [ARGS...]
#
# Needs `perf` (Debian: linux-perf) and kernel call chains (`perf_event_paranoid` <= 1, or
# root). Shares are of all samples in the threads shown (rows under 0.5 % are left out);
# multiply by the run's CPU seconds per million deliveries to get seconds per million.
set -euo pipefail

threads='.*'
if [ "${1:-}" = "-t" ]; then
    threads=$2
    shift 2
fi
[ "${1:-}" = "--" ] && shift
if [ $# -eq 0 ]; then
    echo "usage: $0 [-t THREAD_REGEX] -- COMMAND [ARGS...]" >&2
    exit 2
fi
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }

data=$(mktemp /tmp/cpu-breakdown.XXXXXX)
trap 'rm -f "$data"' EXIT
perf record -q -g -F 4000 -o "$data" -- "$@"
perf script -i "$data" -F comm,ip,sym,dso 2>/dev/null | awk -v want="$threads" '
# One sample: a header line (the thread name), then its frames, innermost first.
function flush(   key, i) {
    if (comm == "" || comm !~ ("^(" want ")$")) { comm = ""; n = 0; return }
    if (n == 0) { comm = ""; return }
    if (dso[1] == "[kernel.kallsyms]") {
        key = "kernel: other"
        # The outermost entry point below the user/kernel boundary names the cause.
        for (i = 1; i <= n; i++) {
            if (sym[i] ~ /^__x64_sys_/) key = "kernel: " substr(sym[i], 11)
            else if (sym[i] ~ /^asm_/) key = "kernel: " substr(sym[i], 5)
            else if (sym[i] == "do_writev" && key == "kernel: other") key = "kernel: writev"
        }
    } else if (dso[1] ~ /libc/) key = "user: libc (allocator, memcpy)"
    else if (dso[1] ~ /vdso/) key = "user: vdso (clock)"
    else key = "user: program"
    count[comm SUBSEP key]++
    total[comm]++
    all++
    comm = ""; n = 0
}
/^[^ \t]/ { flush(); comm = $1; n = 0; next }
/^[ \t]+[0-9a-f]+ / {
    n++
    s = $2; sub(/\+0x[0-9a-f]+$/, "", s); sym[n] = s
    d = $NF; gsub(/[()]/, "", d); dso[n] = d
    next
}
END {
    flush()
    if (all == 0) { print "no samples in threads matching " want > "/dev/stderr"; exit 1 }
    for (c in total) printf "%s\t%.1f\tall of it\n", c, 100 * total[c] / all
    for (k in count) {
        split(k, p, SUBSEP)
        if (100 * count[k] / all >= 0.5) printf "%s\t%.1f\t%s\n", p[1], 100 * count[k] / all, p[2]
    }
}' | sort -t "$(printf '\t')" -k1,1 -k2,2nr | awk -F '\t' '
    $1 != last { if (last != "") print ""; last = $1 }
    { printf "%-8s %5.1f%%  %s\n", $1, $2, $3 }'
