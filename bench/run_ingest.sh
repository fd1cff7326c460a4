#!/usr/bin/env bash
# Benchmark of `kbsync ingest` on a file tree (issue 12 targets): a corpus
# of N text files (default 10,000; 1-20 KB each of real English text from
# /usr/share/doc, 70% .txt, 20% .md, 10% .html), ingested into a leader + 2
# replicas on loopback (fsync on, built-in embedder, dim 384, async
# writes), then ingested again with --resume.
#  1. first ingest: MB/s of file bytes (target >= 20), until the leader
#     acknowledged everything and until both replicas applied it;
#  2. --resume of the complete ingest: its time (target <= 10% of the
#     first) and that it writes nothing (leader version unchanged); then
#     the same with --no-cache (every file read and hashed again, as on a
#     machine without the first run's hash cache);
#  3. where the time goes: the same ingest with --dry-run (reading,
#     checking, extracting, chunking, hashing; nothing sent) and the
#     resume's listing alone.
# usage: bench/run_ingest.sh [N=10000] [--chunk-bytes N ...extra ingest options]
# env: B=build dir (default build), KEEP=1 keeps the corpus dir, ROUNDS=3
# rounds of 1. and 2., each on a fresh cluster (the medians are printed).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
shift || true
EXTRA=("$@")
B=${B:-build}
bash scripts/build.sh "$B" Release >/dev/null
W=$(mktemp -d /tmp/kbsync-bingest-XXXXXX)
mkdir -p results
OUT=results/ingest-$(date -u +%Y%m%dT%H%M%SZ).txt
. bench/lib.sh
trap 'stop_all; [ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
exec > >(tee "$OUT") 2>&1

ms() { echo $(( ($2 - $1) / 1000000 )); }
# cpu_s PID: user+system CPU seconds a process has used so far
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
# the node's own version: the first "version" key (a leader's status lists
# its replicas' versions after it)
version_of() { $B/kbsync status --to "$1" --json | grep -o '"version":[0-9]*' | head -1 | cut -d: -f2; }

echo "# kbsync ingest of a file tree, $(date -u +%FT%TZ), $(nproc) cores, fsync on"
# The corpus: paragraphs of the Debian docs on this machine (copyright files
# and changelogs), dealt out to N files of 1-20 KB. Deterministic (seed 12).
python3 - "$W/corpus" "$N" <<'EOF'
import glob, gzip, os, random, sys, html
out, n = sys.argv[1], int(sys.argv[2])
random.seed(12)
paras = []
for p in sorted(glob.glob('/usr/share/doc/*/copyright') +
                glob.glob('/usr/share/doc/*/changelog*.gz'))[:4000]:
    try:
        t = gzip.open(p).read() if p.endswith('.gz') else open(p, 'rb').read()
        t = t.decode('utf-8')
    except Exception:
        continue
    for para in t.split('\n\n'):
        para = para.strip()
        if 40 <= len(para) <= 4000:
            paras.append(para)
assert len(paras) > 1000, len(paras)
total = 0
for i in range(n):
    d = os.path.join(out, 'd%02d' % (i % 50), 's%d' % (i % 7))
    os.makedirs(d, exist_ok=True)
    want = random.randint(1024, 20 * 1024)
    body, size = [], 0
    while size < want:
        p = random.choice(paras)
        body.append(p)
        size += len(p.encode()) + 2
    r = random.random()
    if r < 0.7:
        name, text = 'f%05d.txt' % i, '\n\n'.join(body) + '\n'
    elif r < 0.9:
        name, text = 'f%05d.md' % i, '# Notes %d\n\n' % i + '\n\n'.join(body) + '\n'
    else:
        name = 'f%05d.html' % i
        text = ('<html><head><title>Page %d</title><style>p{margin:0}</style>'
                '</head><body>\n' % i + ''.join('<p>%s</p>\n' % html.escape(p) for p in body)
                + '</body></html>\n')
    data = text.encode()
    open(os.path.join(d, name), 'wb').write(data)
    total += len(data)
print('# corpus: %d files, %.1f MB, %d source paragraphs' % (n, total / 1e6, len(paras)))
EOF
BYTES=$(find "$W/corpus" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
# the corpus just written is still being flushed to disk: let that finish
# first, so that the ingest is not timed against its writeback
sync

# Each round: a fresh leader + 2 replicas, the first ingest, then the resume
# of that complete ingest. ROUNDS (default 3); the medians come last.
ROUNDS=${ROUNDS:-3}
: > "$W/rounds"
for round in $(seq "$ROUNDS"); do
start_cluster
echo "# round $round: leader $LEADER, replicas r1 $R1, r2 $R2 (dim 384, flat index, async writes)"
CMD=("$B/kbsync" ingest --to "$LEADER" "${EXTRA[@]}" "$W/corpus")
echo "== 1. first ingest: ${CMD[*]}"
t0=$(date +%s%N)
TIMEFORMAT='client CPU: user %U s, system %S s'
time ("${CMD[@]}" | tail -1 | tee "$W/first.json")
t1=$(date +%s%N)
V=$(version_of "$LEADER")
until [ "$(version_of "$R1")" -ge "$V" ] && [ "$(version_of "$R2")" -ge "$V" ]; do sleep 0.01; done
t2=$(date +%s%N)
FIRST_MS=$(ms "$t0" "$t1")
BOTH_MS=$(ms "$t0" "$t2")
echo "first ingest: $BYTES bytes, $V documents; leader acks after $FIRST_MS ms" \
     "= $(awk -v b="$BYTES" -v m="$FIRST_MS" 'BEGIN {printf "%.1f", b / 1e6 / (m / 1e3)}') MB/s;" \
     "both replicas applied all after $(ms "$t0" "$t2") ms" \
     "= $(awk -v b="$BYTES" -v m="$(ms "$t0" "$t2")" 'BEGIN {printf "%.1f", b / 1e6 / (m / 1e3)}') MB/s"
echo "node CPU for the first ingest (s): leader $(cpu_s "${pids[0]}"), r1 $(cpu_s "${pids[1]}"), r2 $(cpu_s "${pids[2]}")"

echo "== 2. resume of the complete ingest: ${CMD[*]:0:4} --resume ${EXTRA[*]} $W/corpus"
t0=$(date +%s%N)
"$B/kbsync" ingest --to "$LEADER" --resume "${EXTRA[@]}" "$W/corpus" | tail -1
t1=$(date +%s%N)
V2=$(version_of "$LEADER")
RES_MS=$(ms "$t0" "$t1")
echo "resume: $RES_MS ms = $(awk -v a="$RES_MS" -v b="$FIRST_MS" 'BEGIN {printf "%.1f", 100 * a / b}')% of the first ingest;" \
     "leader version $V before, $V2 after ($([ "$V" = "$V2" ] && echo "nothing written" || echo "WROTE $((V2 - V))"))"
t0=$(date +%s%N)
"$B/kbsync" ingest --to "$LEADER" --resume --no-cache "${EXTRA[@]}" "$W/corpus" | tail -1
t1=$(date +%s%N)
NC_MS=$(ms "$t0" "$t1")
echo "resume --no-cache: $NC_MS ms = $(awk -v a="$NC_MS" -v b="$FIRST_MS" 'BEGIN {printf "%.1f", 100 * a / b}')% of the first ingest"
echo "$FIRST_MS $BOTH_MS $RES_MS $NC_MS" >> "$W/rounds"
[ "$round" = "$ROUNDS" ] || stop_all
done
sort -n -k1 "$W/rounds" | awk -v b="$BYTES" -v n="$ROUNDS" '
  {f[NR] = $1}
  END {m = int((n + 1) / 2);
       printf "medians of %d rounds: first ingest %d ms = %.1f MB/s (each round, MB/s:", n, f[m], b / 1e6 / (f[m] / 1e3);
       for (i = 1; i <= n; i++) printf " %.1f", b / 1e6 / (f[i] / 1e3);
       printf ")\n"}'
awk '{print 100 * $3 / $1, $3}' "$W/rounds" | sort -n | awk -v n="$ROUNDS" '
  {p[NR] = $1; t[NR] = $2} END {m = int((n + 1) / 2);
  printf "resume: median %.1f%% of its round'"'"'s first ingest (each: ", p[m];
  for (i = 1; i <= n; i++) printf "%s%.1f%% / %d ms", (i > 1 ? ", " : ""), p[i], t[i]; printf ")\n"}'
awk '{print 100 * $4 / $1, $4}' "$W/rounds" | sort -n | awk -v n="$ROUNDS" '
  {p[NR] = $1; t[NR] = $2} END {m = int((n + 1) / 2);
  printf "resume --no-cache: median %.1f%% (each: ", p[m];
  for (i = 1; i <= n; i++) printf "%s%.1f%% / %d ms", (i > 1 ? ", " : ""), p[i], t[i]; printf ")\n"}'

echo "== 3. where the time goes"
t0=$(date +%s%N)
"$B/kbsync" ingest --dry-run "${EXTRA[@]}" "$W/corpus" | tail -1
t1=$(date +%s%N)
echo "client side alone (--dry-run: read, check, extract, chunk, hash; nothing sent): $(ms "$t0" "$t1") ms"
t0=$(date +%s%N)
"$B/kbsync" list --to "$LEADER" --meta-key sha | wc -l | sed 's/^/listing lines: /'
t1=$(date +%s%N)
echo "listing every chunk with its sha (kbsync list, pages of 10,000): $(ms "$t0" "$t1") ms"
stop_all
echo "(saved in $OUT)"
