/* Strict number parsers (see parse-number.h for the accepted forms).
 *
 * Integers are parsed by hand rather than with strtoull(): the grammar is tiny, and doing it
 * here means there is no sign, blank or base handling to undo afterwards. Doubles are
 * checked against a small decimal grammar first and only then handed to strtod_l() in the C
 * locale, which does the correctly rounded conversion. */
#include "parse-number.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

/* Parses the run of digits at s into *ret and returns how many characters it used; 0 when s
 * does not start with a digit. -ERANGE when the digits do not fit in 64 bits. */
static int parse_digits(const char *s, uint64_t *ret, size_t *ret_len) {
    uint64_t v = 0;
    size_t i = 0;

    for (; is_digit(s[i]); i++) {
        unsigned d = (unsigned)(s[i] - '0');

        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *ret = v;
    *ret_len = i;
    return 0;
}

int llep__parse_u64(const char *s, uint64_t *ret) {
    uint64_t v;
    size_t len;
    int r;

    if (!s || !ret)
        return -EINVAL;
    r = parse_digits(s, &v, &len);
    if (r < 0) {
        /* Overflow reads as -ERANGE only for a well-formed string; "9999...9x" is garbage. */
        for (len = 0; is_digit(s[len]); len++)
            ;
        return s[len] ? -EINVAL : r;
    }
    if (len == 0 || s[len] != '\0')
        return -EINVAL;
    *ret = v;
    return 0;
}

int llep__parse_u32(const char *s, uint32_t *ret) {
    uint64_t v;
    int r;

    if (!ret)
        return -EINVAL;
    r = llep__parse_u64(s, &v);
    if (r < 0)
        return r;
    if (v > UINT32_MAX)
        return -ERANGE;
    *ret = (uint32_t)v;
    return 0;
}

/* [+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)? and nothing after it. */
static bool is_decimal_float(const char *s) {
    size_t mantissa_digits = 0;

    if (*s == '+' || *s == '-')
        s++;
    for (; is_digit(*s); s++)
        mantissa_digits++;
    if (*s == '.')
        for (s++; is_digit(*s); s++)
            mantissa_digits++;
    if (mantissa_digits == 0)
        return false;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        if (!is_digit(*s))
            return false;
        while (is_digit(*s))
            s++;
    }
    return *s == '\0';
}

int llep__parse_double(const char *s, double *ret) {
    locale_t c_locale;
    char *end;
    double v;
    int saved_errno = errno;

    if (!s || !ret || !is_decimal_float(s))
        return -EINVAL;

    /* The C locale keeps '.' the decimal point even in a program that called setlocale(). */
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (c_locale == (locale_t)0)
        return -ENOMEM;
    errno = 0;
    v = strtod_l(s, &end, c_locale);
    freelocale(c_locale);
    if (*end != '\0') {
        errno = saved_errno;
        return -EINVAL;
    }
    /* ERANGE also reports underflow, which strtod() has already rounded sensibly; only a
     * result that is not finite is out of range. */
    errno = saved_errno;
    if (!isfinite(v))
        return -ERANGE;
    *ret = v;
    return 0;
}

static bool is_char_ci(char c, char upper) {
    return c == upper || c == (char)(upper + ('a' - 'A'));
}

/* Returns the power-of-two shift of a size suffix ("", "B", "K", "KB", "KiB", ...), or -1
 * when it is not one. */
static int size_suffix_shift(const char *suffix) {
    static const char units[] = "KMGT";
    int shift = 0;

    for (int i = 0; units[i]; i++)
        if (is_char_ci(suffix[0], units[i])) {
            shift = 10 * (i + 1);
            suffix++;
            break;
        }
    if (shift > 0 && is_char_ci(suffix[0], 'I') && is_char_ci(suffix[1], 'B'))
        suffix += 2;
    else if (is_char_ci(suffix[0], 'B'))
        suffix++;
    return *suffix == '\0' ? shift : -1;
}

int llep__parse_size(const char *s, uint64_t *ret) {
    uint64_t v;
    size_t len;
    int r, shift;

    if (!s || !ret)
        return -EINVAL;
    r = parse_digits(s, &v, &len);
    if (r < 0) {
        for (len = 0; is_digit(s[len]); len++)
            ;
        return size_suffix_shift(s + len) < 0 ? -EINVAL : r;
    }
    if (len == 0)
        return -EINVAL;
    shift = size_suffix_shift(s + len);
    if (shift < 0)
        return -EINVAL;
    if (shift > 0 && v > (UINT64_MAX >> shift))
        return -ERANGE;
    *ret = v << shift;
    return 0;
}
