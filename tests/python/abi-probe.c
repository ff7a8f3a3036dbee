/* Prints the size of every struct of include/llep/client.h and the offset of each field, as
 * the C compiler lays them out, for tests/python/test_abi.py to compare with cffi's view of the
 * same declarations (which cffi lays out itself in ABI mode). One JSON object. */
#include <stddef.h>
#include <stdio.h>

#include "llep/client.h"

#define FIELD(s, f) printf("%s\"%s\": %zu", first++ ? ", " : "", #f, offsetof(s, f))
#define STRUCT(s, ...)                                                          \
    do {                                                                        \
        int first = 0;                                                          \
        printf("%s\"%s\": {\"sizeof\": %zu, \"fields\": {", n++ ? ", " : "", #s, \
               sizeof(s));                                                      \
        __VA_ARGS__;                                                            \
        printf("}}");                                                           \
    } while (0)

int main(void) {
    int n = 0;

    printf("{");
    STRUCT(llep_layer_desc,
           FIELD(llep_layer_desc, num_experts); FIELD(llep_layer_desc, top_k);
           FIELD(llep_layer_desc, hidden); FIELD(llep_layer_desc, inter);
           FIELD(llep_layer_desc, dtype); FIELD(llep_layer_desc, act);
           FIELD(llep_layer_desc, act_alpha); FIELD(llep_layer_desc, act_limit);
           FIELD(llep_layer_desc, w_gate); FIELD(llep_layer_desc, w_up);
           FIELD(llep_layer_desc, w_down); FIELD(llep_layer_desc, b_gate);
           FIELD(llep_layer_desc, b_up); FIELD(llep_layer_desc, b_down);
           FIELD(llep_layer_desc, policy); FIELD(llep_layer_desc, alpha);
           FIELD(llep_layer_desc, lambda); FIELD(llep_layer_desc, min_tokens);
           FIELD(llep_layer_desc, group); FIELD(llep_layer_desc, scope);
           FIELD(llep_layer_desc, group_timeout_ms); FIELD(llep_layer_desc, gate_up_layout);
           FIELD(llep_layer_desc, down_layout); FIELD(llep_layer_desc, w_gate_up);
           FIELD(llep_layer_desc, b_gate_up));
    STRUCT(llep_io,
           FIELD(llep_io, tokens); FIELD(llep_io, idx_type); FIELD(llep_io, x);
           FIELD(llep_io, topk_idx); FIELD(llep_io, topk_w); FIELD(llep_io, y);
           FIELD(llep_io, x_dtype); FIELD(llep_io, w_dtype); FIELD(llep_io, y_dtype));
    STRUCT(llep_model_info,
           FIELD(llep_model_info, num_layers); FIELD(llep_model_info, desc);
           FIELD(llep_model_info, bias); FIELD(llep_model_info, model_type));
    printf("}\n");
    return 0;
}
