#include "json-fixtures.h"
#include <check.h>
#include "fixtures.h"

json_object *llep_test_jget(json_object *o, const char *key) {
    json_object *v = NULL;

    ck_assert_msg(json_object_object_get_ex(o, key, &v), "JSON lacks '%s'", key);
    return v;
}

json_object *llep_test_run_json(const char *const *argv) {
    llep_test_output o = llep_test_run(argv, NULL);

    ck_assert_msg(o.status == 0, "%s exited %d: %s", argv[0], o.status, o.err);
    json_object *j = json_tokener_parse(o.out);
    ck_assert_msg(j && json_object_is_type(j, json_type_object), "%s: not a JSON object: %s",
                  argv[0], o.out);
    llep_test_output_free(&o);
    return j;
}
