/* Fuzz target: the stored calibration's parser (daemon/server/calib-file.c), a file llepd
 * reads from its state directory at start. Whatever it accepts must be a model that passes
 * llep__cost_check, and must survive a format and parse again unchanged (the same hash and
 * the same text); any crash or sanitizer report is a bug. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib-file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    llep_calibration cal, again;
    char err[512];

    if (llep__calib_parse((const char *)data, size, "fuzz.json", &cal, err, sizeof(err)) < 0)
        return 0;
    if (llep__cost_check(&cal.model, err, sizeof(err)) < 0) {
        fprintf(stderr, "accepted a model that fails its check: %s\n", err);
        abort();
    }
    char *text = llep__calib_format(&cal);
    if (!text)
        return 0;
    if (llep__calib_parse(text, strlen(text), "again.json", &again, err, sizeof(err)) < 0) {
        fprintf(stderr, "its own output is refused: %s\n%s", err, text);
        abort();
    }
    char *text2 = llep__calib_format(&again);
    if (llep__cost_hash(&cal.model) != llep__cost_hash(&again.model) ||
        (text2 && strcmp(text, text2) != 0)) {
        fprintf(stderr, "changed on the way through the file:\n%s\n%s", text, text2);
        abort();
    }
    free(text);
    free(text2);
    return 0;
}
