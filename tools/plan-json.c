/* Plans as JSON (plan-json.h). */
#include "plan-json.h"

/* Ranges are stored grouped by expert, so walking the offsets lists assignments in expert
 * order, each expert's ranges in token order. */
static json_object *assignments(const llep_plan *p) {
    json_object *a = llep__jout_array();

    for (uint32_t e = 0; e < p->num_experts; e++)
        for (uint32_t i = p->range_off[e]; i < p->range_off[e + 1]; i++) {
            const llep_range *r = &p->ranges[i];
            json_object *o = llep__jout_object();
            llep__jout_u64(o, "expert", e);
            llep__jout_u64(o, "device", r->device);
            llep__jout_u64(o, "start", r->start);
            llep__jout_u64(o, "end", r->end);
            llep__jout_push(a, o);
        }
    return a;
}

static json_object *transfers(const llep_plan *p) {
    json_object *a = llep__jout_array();

    for (uint32_t t = 0; t < p->num_transfers; t++) {
        const llep_transfer *x = &p->transfers[t];
        json_object *o = llep__jout_object();
        llep__jout_u64(o, "expert", x->expert);
        llep__jout_u64(o, "src", x->src);
        llep__jout_u64(o, "dst", x->dst);
        llep__jout_push(a, o);
    }
    return a;
}

json_object *llep__plan_json(const llep_plan *p, const llep_plan_nodes *nodes) {
    json_object *o = llep__jout_object();

    llep__jout_str(o, "mode", p->mode == LLEP_PLAN_LLEP ? "llep" : "ep");
    llep__jout_f64(o, "imbalance", p->imbalance);
    llep__jout_u64(o, "capacity", p->capacity);
    llep__jout_u64(o, "devices", p->num_devices);
    if (nodes) {
        llep__jout_u64(o, "nodes", nodes->num_nodes);
        llep__jout_u64(o, "devices_per_node", nodes->devices_per_node);
        llep__jout_u64(o, "inter_node_rows", nodes->rows);
        llep__jout_u64(o, "inter_node_transfers", nodes->transfers);
    }
    llep__jout_add(o, "device_loads", llep__jout_u64s(p->device_loads, p->num_devices));
    llep__jout_add(o, "assignments", assignments(p));
    llep__jout_add(o, "transfers", transfers(p));
    return o;
}
