/* llep-bench --tune --write-config: the tuned point into an llepd config file. */
#ifndef LLEP_TOOLS_BENCH_TUNE_CONFIG_H
#define LLEP_TOOLS_BENCH_TUNE_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

/* Sets alpha, lambda, min-tokens and replica-cache (auto when cache, else off) in the llepd
 * config file at path (made when missing): each key's first line is replaced and its later
 * lines dropped (llepd takes the last, which would undo the tuning), keys the file lacks are
 * appended, every other line is kept. The file keeps its mode. Exits through
 * llep__bench_die() when the file cannot be read or written or llepd's parser refuses the
 * result, which then leaves the old file in place. */
void llep__bench_write_config(const char *path, double alpha, double lambda,
                              uint32_t min_tokens, bool cache);

#endif
