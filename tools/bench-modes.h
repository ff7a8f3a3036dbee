/* llep-bench's modes beyond EP against LLEP, each in its own file; each runs on an opened
 * bench (bench.h) and returns the exit code. */
#ifndef LLEP_TOOLS_BENCH_MODES_H
#define LLEP_TOOLS_BENCH_MODES_H

#include "bench.h"

/* --planners: the scenarios under several planners, side by side (bench-decode.c). */
int llep__bench_planners(llep_bench *b);
/* --trace: a routing trace replayed with the replica cache off and on (bench-trace.c). */
int llep__bench_trace(llep_bench *b);
/* --tune: the search over alpha, m, lambda and the cache size (bench-tune.c). */
int llep__bench_tune(llep_bench *b);

#endif
