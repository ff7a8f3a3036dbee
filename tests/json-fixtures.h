/* JSON in the test suites (built into every suite with fixtures.c): members that must be
 * there, and programs whose --json output is checked. */
#ifndef LLEP_TEST_JSON_FIXTURES_H
#define LLEP_TEST_JSON_FIXTURES_H

#include <json-c/json.h>

/* o[key]; the test fails, naming the key, when o has none. */
json_object *llep_test_jget(json_object *o, const char *key);

/* Runs argv (llep_test_run()) and parses its stdout as one JSON object (the caller puts it);
 * the test fails when the program does not exit 0, with its stderr, or when the output is not
 * a JSON object, with the output. */
json_object *llep_test_run_json(const char *const *argv);

#endif
