# Plots of the trade-off benchmark (bench/tradeoff.sh). Reads the .dat
# files that `bench_tradeoff report` wrote into `dir` and writes PNGs into
# `out`. Variables (gnuplot -e): dir, out, delays ("0 5 50"), ns ("1 2 4").
set terminal pngcairo size 1100,460 font ",10"
set grid
set key top left box opaque
nd = words(delays)
nn = words(ns)
f_open(D, m, n) = sprintf("%s/open-d%s-%s-n%s.dat", dir, D, m, n)
f_scale(D, m) = sprintf("%s/scale-d%s-%s.dat", dir, D, m)
f_delay(m, n) = sprintf("%s/delay-%s-n%s.dat", dir, m, n)

do for [di = 1:nd] {
  D = word(delays, di)
  set output sprintf("%s/tradeoff-d%sms-latency.png", out, D)
  set multiplot layout 1,2 title sprintf("single-doc write latency under open-loop load, %s ms added delay per link", D)
  set logscale xy
  set xlabel "offered writes/s"
  set ylabel "ms from scheduled send to ack"
  set title "p50"
  plot for [i = 1:nn] f_open(D, "async", word(ns, i)) using 1:3 with linespoints lw 2 dt 1 title sprintf("async N=%s", word(ns, i)), \
       for [i = 1:nn] f_open(D, "all", word(ns, i)) using 1:3 with linespoints lw 2 dt 2 title sprintf("all N=%s", word(ns, i))
  set title "p99"
  plot for [i = 1:nn] f_open(D, "async", word(ns, i)) using 1:4 with linespoints lw 2 dt 1 title sprintf("async N=%s", word(ns, i)), \
       for [i = 1:nn] f_open(D, "all", word(ns, i)) using 1:4 with linespoints lw 2 dt 2 title sprintf("all N=%s", word(ns, i))
  unset multiplot
  unset logscale

  set output sprintf("%s/tradeoff-d%sms-lag.png", out, D)
  set multiplot layout 1,2 title sprintf("replica lag under open-loop load (async writes), %s ms added delay per link", D)
  set logscale x
  set xlabel "offered writes/s"
  set ylabel "ms from leader ack to visible on replica"
  set title "lag p50 and p99, ms"
  plot for [i = 1:nn] f_open(D, "async", word(ns, i)) using 1:6 with linespoints lw 2 dt 2 title sprintf("p50 N=%s", word(ns, i)), \
       for [i = 1:nn] f_open(D, "async", word(ns, i)) using 1:7 with linespoints lw 2 dt 1 title sprintf("p99 N=%s", word(ns, i))
  set ylabel "versions behind the newest acked write"
  set title "lag p99, versions"
  plot for [i = 1:nn] f_open(D, "async", word(ns, i)) using 1:8 with linespoints lw 2 title sprintf("N=%s", word(ns, i))
  unset multiplot
  unset logscale

  set output sprintf("%s/tradeoff-d%sms-scaling.png", out, D)
  set multiplot layout 1,2 title sprintf("scalability as N grows, %s ms added delay per link", D)
  set xlabel "replicas N"
  set xtics 1
  set ylabel "docs/s"
  set title "batched ingest until every replica applied all"
  set yrange [0:*]
  plot f_scale(D, "async") using 1:2 with linespoints lw 2 title "async", \
       f_scale(D, "all") using 1:2 with linespoints lw 2 title "all"
  set ylabel "ms"
  set title "single-doc write latency p50 / p99 (closed loop)"
  plot f_scale(D, "async") using 1:3 with linespoints lw 2 dt 2 title "async p50", \
       f_scale(D, "async") using 1:4 with linespoints lw 2 dt 1 title "async p99", \
       f_scale(D, "all") using 1:3 with linespoints lw 2 dt 2 title "all p50", \
       f_scale(D, "all") using 1:4 with linespoints lw 2 dt 1 title "all p99"
  unset multiplot
  set autoscale y
  set xtics autofreq
}

if (nd > 1) {
  set output sprintf("%s/tradeoff-delays.png", out)
  set multiplot layout 1,3 title "what added network delay does to each mode (x: added one-way delay per link, ms)"
  set xlabel "added delay, ms"
  set xrange [-0.3:nd-0.7]
  set logscale y
  set ylabel "ms"
  set title "single-doc write latency p50 (closed loop)"
  plot for [i = 1:nn] f_delay("async", word(ns, i)) using 0:2:xtic(1) with linespoints lw 2 dt 1 title sprintf("async N=%s", word(ns, i)), \
       for [i = 1:nn] f_delay("all", word(ns, i)) using 0:2:xtic(1) with linespoints lw 2 dt 2 title sprintf("all N=%s", word(ns, i))
  unset logscale y
  set ylabel "share of reads that saw the write"
  set yrange [0:1.05]
  set key bottom left
  set title "read-after-write, 1 client (all: dashed)"
  plot for [i = 1:nn] f_delay("async", word(ns, i)) using 0:4:xtic(1) with linespoints lw 2 dt 1 title sprintf("async N=%s", word(ns, i)), \
       for [i = 1:nn] f_delay("all", word(ns, i)) using 0:4:xtic(1) with linespoints lw 2 dt 2 title sprintf("all N=%s", word(ns, i))
  set title "read-after-write, N clients at once (all: dashed)"
  plot for [i = 1:nn] f_delay("async", word(ns, i)) using 0:8:xtic(1) with linespoints lw 2 dt 1 title sprintf("async N=%s", word(ns, i)), \
       for [i = 1:nn] f_delay("all", word(ns, i)) using 0:8:xtic(1) with linespoints lw 2 dt 2 title sprintf("all N=%s", word(ns, i))
  unset multiplot
}
