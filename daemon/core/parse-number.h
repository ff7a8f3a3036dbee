/* Strict parsers for numbers given on command lines, in config files and in llepctl's
 * `set KEY=VALUE`.
 *
 * strtoull() and friends are lenient in ways that hide mistakes: they skip leading blanks,
 * accept "-1" as 18446744073709551615, stop silently at trailing garbage and accept "nan".
 * These wrappers accept exactly one well-formed number filling the whole string and nothing
 * else, so "--devices 8x" or "alpha = 1.5.0" is an error rather than a surprise.
 *
 * Every function returns 0 and stores the value in *ret, or returns a negative errno and
 * leaves *ret untouched:
 *   -EINVAL  the string is NULL, empty or not a number of the expected form;
 *   -ERANGE  the number is well formed but does not fit the type (or is not finite). */
#ifndef LLEP_PARSE_NUMBER_H
#define LLEP_PARSE_NUMBER_H

#include <stdint.h>

/* Unsigned decimal integer: one or more digits, nothing else (no sign, no blanks, no base
 * prefix). Leading zeros are accepted ("007" is 7). */
int llep__parse_u64(const char *s, uint64_t *ret);
int llep__parse_u32(const char *s, uint32_t *ret);

/* Finite decimal floating-point number: an optional sign, digits with at most one '.' (at
 * least one digit in all), and an optional exponent ("1", "-0.5", ".5", "2.", "1e-3",
 * "+3E2"). The decimal point is '.' whatever the process locale says. No blanks, no hex
 * floats, no "nan" or "inf" (-EINVAL). A value beyond the double range is -ERANGE; one too
 * small to represent becomes 0 or a subnormal, as strtod() rounds it. */
int llep__parse_double(const char *s, double *ret);

/* Byte count: an unsigned decimal integer, optionally followed by one binary-multiple suffix
 * K, M, G or T (case-insensitive, 1024-based), which may itself be followed by "B" or "iB";
 * a bare "B" is also accepted. "64", "512K", "16G", "16GiB", "1tb", "100B" are all valid;
 * "1.5G", "G", "16 G", "-1K" are not. The result must fit in 64 bits. */
int llep__parse_size(const char *s, uint64_t *ret);

#endif
