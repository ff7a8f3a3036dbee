/* llepd's log: one line per message on stderr, with a "<N>" syslog priority prefix when
 * stderr goes to the journal (systemd sets $JOURNAL_STREAM then), so `journalctl -p` works;
 * "llepd: LEVEL: " otherwise, for people running it by hand. Safe from any thread. */
#ifndef LLEP_LOG_H
#define LLEP_LOG_H

#include "config.h"

void llep__log_init(enum llep_log_level max_level);
void llep__log_set_level(enum llep_log_level max_level);
enum llep_log_level llep__log_get_level(void);

void llep__log(enum llep_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) llep__log(LLEP_LOG_ERR, __VA_ARGS__)
#define log_warning(...) llep__log(LLEP_LOG_WARNING, __VA_ARGS__)
#define log_notice(...) llep__log(LLEP_LOG_NOTICE, __VA_ARGS__)
#define log_info(...) llep__log(LLEP_LOG_INFO, __VA_ARGS__)
#define log_debug(...) llep__log(LLEP_LOG_DEBUG, __VA_ARGS__)

#endif
