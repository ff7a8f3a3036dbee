/* llepctl: inspects and tunes a running llepd.
 *
 *   llepctl [--socket PATH] [--json] VERB [ARG]...
 *
 * Each verb is one request and one reply on the control socket (proto/llep.proto), rendered
 * as a readable table or, with --json, as one JSON object on one line (built with json-c).
 *
 * Exit status: 0 on success, 1 when llepd refuses or cannot be reached (with its message),
 * 2 for usage errors. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llepctl.h"
#include "config.h"
#include "conn.h"
#include "cost-table.h"
#include "llep-config.h"
#include "plan-json.h"
#include "plan-print.h"
#include "plan.h"

/* ---------------------------------------------------------------------------------------- */
/* Verbs. Each gets the arguments after the verb, already counted against the table. */

static int verb_status(ctl *x, char **argv) {
    LlepPb__StatusRequest sr = LLEP_PB__STATUS_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    const LlepPb__StatusReply *s;
    char buf[64];
    int r;

    req.body_case = LLEP_PB__FRAME__BODY_STATUS;
    req.status = &sr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_STATUS_REPLY, &reply);
    if (r)
        return r;
    s = reply->status_reply;
    if (x->json) {
        json_object *o = llep__jout_object();
        llep__jout_str(o, "daemon_version", s->daemon_version);
        llep__jout_u64(o, "protocol_version", s->protocol_version);
        llep__jout_u64(o, "pid", s->pid);
        llep__jout_u64(o, "uptime_us", s->uptime_us);
        llep__jout_str(o, "backend", ctl_backend_name(s->backend));
        llep__jout_u64(o, "devices", s->devices);
        llep__jout_u64(o, "clients", s->clients);
        llep__jout_u64(o, "layers", s->layers);
        llep__jout_bool(o, "draining", s->draining);
        return ctl_json_print(o);
    }
    printf("llepd %s (protocol %" PRIu32 "), pid %" PRIu32 "\n", s->daemon_version,
           s->protocol_version, s->pid);
    printf("  state     %s\n", s->draining ? "draining" : "serving");
    printf("  uptime    %s\n", ctl_fmt_uptime(s->uptime_us, buf, sizeof(buf)));
    printf("  backend   %s\n", ctl_backend_name(s->backend));
    printf("  devices   %" PRIu32 "\n", s->devices);
    printf("  clients   %" PRIu32 "\n", s->clients);
    printf("  layers    %" PRIu32 "\n", s->layers);
    return 0;
}

/* Experts of other layers or devices, as [{"layer_id", "expert"}]. */
static json_object *experts_json(LlepPb__ForeignExpert *const *v, size_t n) {
    json_object *a = llep__jout_array();

    for (size_t k = 0; k < n; k++) {
        json_object *e = llep__jout_object();
        llep__jout_u64(e, "layer_id", v[k]->layer_id);
        llep__jout_u64(e, "expert", v[k]->expert);
        llep__jout_push(a, e);
    }
    return a;
}

static json_object *devices_json(const LlepPb__DevicesReply *d) {
    json_object *o = llep__jout_object(), *devs = llep__jout_array();

    for (size_t i = 0; i < d->n_devices; i++) {
        const LlepPb__DeviceInfo *v = d->devices[i];
        json_object *j = llep__jout_object();

        llep__jout_u64(j, "index", v->index);
        llep__jout_str(j, "name", v->name);
        llep__jout_str(j, "state", v->state);
        llep__jout_u64(j, "served_by", v->served_by);
        llep__jout_str(j, "failure", v->failure);
        llep__jout_u64(j, "memory_budget", v->memory_budget);
        llep__jout_u64(j, "memory_used", v->memory_used);
        llep__jout_u64(j, "memory_peak", v->memory_peak);
        llep__jout_u64(j, "last_step_tokens", v->last_step_tokens);
        llep__jout_u64(j, "last_step_busy_ns", v->last_step_busy_ns);
        llep__jout_add(j, "foreign_experts",
                       experts_json(v->foreign_experts, v->n_foreign_experts));
        llep__jout_u64(j, "cache_bytes", v->cache_bytes);
        llep__jout_u64(j, "cache_limit", v->cache_limit);
        llep__jout_u64(j, "cache_hits", v->cache_hits);
        llep__jout_u64(j, "cache_bytes_saved", v->cache_bytes_saved);
        llep__jout_u64(j, "cache_evictions", v->cache_evictions);
        llep__jout_add(j, "cached_experts", experts_json(v->cached_experts, v->n_cached_experts));
        llep__jout_push(devs, j);
    }
    llep__jout_add(o, "devices", devs);
    return o;
}

static int verb_devices(ctl *x, char **argv) {
    LlepPb__DevicesRequest dr = LLEP_PB__DEVICES_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    const LlepPb__DevicesReply *d;
    char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32];
    int r;

    req.body_case = LLEP_PB__FRAME__BODY_DEVICES;
    req.devices = &dr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_DEVICES_REPLY, &reply);
    if (r)
        return r;
    d = reply->devices_reply;
    if (x->json)
        return ctl_json_print(devices_json(d));
    printf("%-6s %-20s %-6s %12s %12s %12s %12s %12s %10s %8s %10s  %s\n", "DEVICE", "NAME",
           "STATE", "BUDGET", "USED", "PEAK", "LAST TOKENS", "LAST BUSY", "CACHE", "HITS", "SAVED",
           "FOREIGN EXPERTS");
    for (size_t i = 0; i < d->n_devices; i++) {
        const LlepPb__DeviceInfo *v = d->devices[i];
        /* A daemon from before device states says nothing: its devices never fail. */
        const char *state = v->state && v->state[0] ? v->state : "ok";

        printf("%-6" PRIu32 " %-20s %-6s %12s %12s %12s %12" PRIu64 " %12s  ", v->index, v->name,
               state,
               v->memory_budget ? ctl_fmt_bytes(v->memory_budget, b1, sizeof(b1)) : "-",
               ctl_fmt_bytes(v->memory_used, b2, sizeof(b2)),
               ctl_fmt_bytes(v->memory_peak, b3, sizeof(b3)), v->last_step_tokens,
               ctl_fmt_us(v->last_step_busy_ns / 1000, b4, sizeof(b4)));
        printf("%10s %8" PRIu64 " %10s  ", ctl_fmt_bytes(v->cache_bytes, b5, sizeof(b5)),
               v->cache_hits, ctl_fmt_bytes(v->cache_bytes_saved, b6, sizeof(b6)));
        if (v->n_foreign_experts == 0)
            fputs("-", stdout);
        for (size_t k = 0; k < v->n_foreign_experts; k++)
            printf("%s%" PRIu32 ":%" PRIu32, k ? " " : "", v->foreign_experts[k]->layer_id,
                   v->foreign_experts[k]->expert);
        putchar('\n');
        /* A failed device: what happened and who does its work now. */
        if (strcmp(state, "failed") == 0)
            printf("%-6s failed (%s): served by device %" PRIu32 "\n", "", v->failure,
                   v->served_by);
        else if (strcmp(state, "ok") != 0)
            printf("%-6s %s (%s): no device is left to serve it\n", "", state, v->failure);
        /* The replica cache's copies, on a line of their own: they outlive the last step. */
        if (v->n_cached_experts == 0)
            continue;
        printf("%-6s cached (limit %s, %" PRIu64 " evicted):", "",
               ctl_fmt_bytes(v->cache_limit, b1, sizeof(b1)), v->cache_evictions);
        for (size_t k = 0; k < v->n_cached_experts; k++)
            printf(" %" PRIu32 ":%" PRIu32, v->cached_experts[k]->layer_id,
                   v->cached_experts[k]->expert);
        putchar('\n');
    }
    if (d->n_devices)
        printf("(experts as LAYER_ID:EXPERT; CACHE: replica cache bytes, HITS and SAVED: weight "
               "copies it spared and their bytes)\n");
    return 0;
}

/* Asks for every layer; shared by `layers` and `plan` (which needs the layer's shape). */
static int get_layers(ctl *x, LlepPb__Frame **ret) {
    LlepPb__LayersRequest lr = LLEP_PB__LAYERS_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;

    req.body_case = LLEP_PB__FRAME__BODY_LAYERS;
    req.layers = &lr;
    return ctl_request(x, &req, LLEP_PB__FRAME__BODY_LAYERS_REPLY, ret);
}

static json_object *layer_json(const LlepPb__LayerInfo *l) {
    const LlepPb__LayerDesc *d = l->desc;
    LlepPb__LayerDesc none = LLEP_PB__LAYER_DESC__INIT;
    json_object *o = llep__jout_object();

    if (!d)
        d = &none;
    llep__jout_u64(o, "layer_id", l->layer_id);
    llep__jout_str(o, "name", l->name);
    llep__jout_u64(o, "num_experts", d->num_experts);
    llep__jout_u64(o, "top_k", d->top_k);
    llep__jout_u64(o, "hidden", d->hidden);
    llep__jout_u64(o, "inter", d->inter);
    llep__jout_str(o, "dtype", ctl_dtype_name(d->dtype));
    llep__jout_str(o, "act", ctl_act_name(d->act));
    llep__jout_str(o, "policy", llep__policy_name((int)d->policy));
    llep__jout_f32(o, "alpha", d->alpha);
    llep__jout_f32(o, "lambda", d->lambda);
    llep__jout_u64(o, "min_tokens", d->min_tokens);
    llep__jout_u64(o, "group", d->group);
    llep__jout_str(o, "scope", ctl_scope_name(d->scope));
    llep__jout_u64(o, "refs", l->refs);
    llep__jout_u64(o, "steps", l->steps);
    llep__jout_u64(o, "weight_bytes", l->weight_bytes);
    if (l->nodes) {
        llep__jout_u64(o, "nodes", l->nodes);
        llep__jout_u64(o, "origin", l->origin);
        llep__jout_u64(o, "internode_rows", l->internode_rows);
        llep__jout_u64(o, "internode_bytes", l->internode_bytes);
        llep__jout_u64(o, "internode_weights", l->internode_weights);
        llep__jout_u64(o, "failed_steps", l->failed_steps);
        llep__jout_u64(o, "communicator_steps", l->communicator_steps);
        llep__jout_str(o, "cluster_state", l->cluster_state);
        llep__jout_str(o, "internode_transport", l->internode_transport);
    }
    return o;
}

static int verb_layers(ctl *x, char **argv) {
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    const LlepPb__LayersReply *ls;
    char b[32];
    int r;

    r = get_layers(x, &reply);
    if (r)
        return r;
    ls = reply->layers_reply;
    if (x->json) {
        json_object *o = llep__jout_object(), *a = llep__jout_array();
        for (size_t i = 0; i < ls->n_layers; i++)
            llep__jout_push(a, layer_json(ls->layers[i]));
        llep__jout_add(o, "layers", a);
        return ctl_json_print(o);
    }
    if (ls->n_layers == 0) {
        printf("no layers\n");
        return 0;
    }
    printf("%-4s %-20s %6s %4s %6s %6s %-5s %-10s %-6s %6s %6s %8s %5s %4s %8s %10s\n", "ID",
           "NAME", "N", "K", "D", "H", "DTYPE", "ACT", "POLICY", "ALPHA", "LAMBDA", "MIN_TOK",
           "GROUP", "REFS", "STEPS", "WEIGHTS");
    for (size_t i = 0; i < ls->n_layers; i++) {
        const LlepPb__LayerInfo *l = ls->layers[i];
        LlepPb__LayerDesc none = LLEP_PB__LAYER_DESC__INIT;
        const LlepPb__LayerDesc *d = l->desc ? l->desc : &none;

        printf("%-4" PRIu32 " %-20s %6" PRIu32 " %4" PRIu32 " %6" PRIu32 " %6" PRIu32
               " %-5s %-10s %-6s %6.3g %6.3g %8" PRIu32 " %5" PRIu32 " %4" PRIu32 " %8" PRIu64
               " %10s\n",
               l->layer_id, l->name, d->num_experts, d->top_k, d->hidden, d->inter,
               ctl_dtype_name(d->dtype), ctl_act_name(d->act), llep__policy_name((int)d->policy),
               (double)d->alpha, (double)d->lambda, d->min_tokens, d->group, l->refs, l->steps,
               ctl_fmt_bytes(l->weight_bytes, b, sizeof(b)));
    }
    for (size_t i = 0; i < ls->n_layers; i++) {
        const LlepPb__LayerInfo *l = ls->layers[i];
        if (!l->nodes)
            continue;
        printf("cluster layer %s: %" PRIu32 " nodes, origin node %" PRIu32 ", %s; sent to other "
               "nodes: %" PRIu64 " token rows, %" PRIu32 " expert weight blocks, %s; %" PRIu64
               " failed steps\n", l->name, l->nodes, l->origin,
               l->cluster_state && l->cluster_state[0] ? l->cluster_state : "?",
               l->internode_rows, l->internode_weights,
               ctl_fmt_bytes(l->internode_bytes, b, sizeof(b)), l->failed_steps);
        printf("  between nodes over %s; %" PRIu64 " steps over the communicator\n",
               l->internode_transport && l->internode_transport[0] ? l->internode_transport
                                                                   : "peer links",
               l->communicator_steps);
    }
    return 0;
}

static int verb_experts(ctl *x, char **argv) {
    LlepPb__ExpertsRequest er = LLEP_PB__EXPERTS_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    const LlepPb__ExpertsReply *e;
    uint64_t max = 0, total = 0;
    int r;

    er.layer = argv[0];
    req.body_case = LLEP_PB__FRAME__BODY_EXPERTS;
    req.experts = &er;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_EXPERTS_REPLY, &reply);
    if (r)
        return r;
    e = reply->experts_reply;
    if (x->json) {
        json_object *o = llep__jout_object(), *last = llep__jout_array();
        llep__jout_str(o, "layer", e->layer);
        llep__jout_u64(o, "steps", e->steps);
        llep__jout_add(o, "loads", llep__jout_u64s(e->loads, e->n_loads));
        /* Before the first step there are no last loads: zeros, one per expert as always. */
        for (size_t i = 0; i < e->n_loads; i++)
            llep__jout_push_u64(last, i < e->n_last_loads ? e->last_loads[i] : 0);
        llep__jout_add(o, "last_loads", last);
        return ctl_json_print(o);
    }
    for (size_t i = 0; i < e->n_loads; i++) {
        max = e->loads[i] > max ? e->loads[i] : max;
        total += e->loads[i];
    }
    printf("layer %s: %zu experts, token-slots over the last %" PRIu32 " step%s\n", e->layer,
           e->n_loads, e->steps, e->steps == 1 ? "" : "s");
    printf("%6s %12s %6s %10s  %s\n", "EXPERT", "LOAD", "SHARE", "LAST STEP", "");
    for (size_t i = 0; i < e->n_loads; i++) {
        printf("%6zu %12" PRIu64 " %5.1f%% %10" PRIu64 "  ", i, e->loads[i],
               total ? 100.0 * (double)e->loads[i] / (double)total : 0.0,
               i < e->n_last_loads ? e->last_loads[i] : 0);
        ctl_bar(e->loads[i], max);
        putchar('\n');
    }
    if (total)
        printf("busiest expert / mean: %.3f\n",
               (double)max * (double)e->n_loads / (double)total);
    return 0;
}

/* Rebuilds an llep_plan from the wire so plan-print.c renders it exactly as llep-plan does.
 * The message lacks N (experts without load have no ranges), so it comes from the layer. */
static int plan_from_message(const LlepPb__Plan *m, uint32_t n, llep_plan *p, char *err,
                             size_t errlen) {
    uint32_t np = m->devices;
    uint32_t *count;
    int r;

    if (llep__plan_init(p, n, np) < 0) {
        snprintf(err, errlen, "a plan of %" PRIu32 " experts on %" PRIu32 " devices", n, np);
        return -EPROTO;
    }
    if (m->n_device_loads != np || m->n_assignments > 2 * (size_t)n + np ||
        m->n_transfers > 2 * (size_t)n + np) {
        snprintf(err, errlen, "%zu device loads, %zu assignments and %zu transfers for %" PRIu32
                 " experts on %" PRIu32 " devices", m->n_device_loads, m->n_assignments,
                 m->n_transfers, n, np);
        return -EPROTO;
    }
    p->mode = m->mode == LLEP_PB__PLAN_MODE__PLAN_MODE_LLEP ? LLEP_PLAN_LLEP : LLEP_PLAN_EP;
    p->imbalance = m->imbalance;
    p->capacity = m->capacity;
    memcpy(p->device_loads, m->device_loads, np * sizeof(uint64_t));

    /* Group the ranges by expert (counting sort, stable, so each expert's stay in order). */
    count = p->range_off;
    for (size_t i = 0; i < m->n_assignments; i++) {
        const LlepPb__PlanRange *a = m->assignments[i];

        if (a->expert >= n || a->device >= np || a->start >= a->end) {
            snprintf(err, errlen, "assignment %zu (expert %" PRIu32 ", device %" PRIu32
                     ", [%" PRIu64 ", %" PRIu64 "))", i, a->expert, a->device, a->start,
                     a->end);
            return -EPROTO;
        }
        count[a->expert + 1]++;
    }
    for (uint32_t e = 0; e < n; e++)
        count[e + 1] += count[e];
    for (size_t i = 0; i < m->n_assignments; i++) {
        const LlepPb__PlanRange *a = m->assignments[i];
        uint32_t at = p->range_off[a->expert]++;

        p->ranges[at] = (llep_range){ .device = a->device, .start = a->start, .end = a->end };
        if (a->end > p->loads[a->expert])
            p->loads[a->expert] = a->end;
    }
    /* The loop above advanced each expert's offset to the next expert's: shift back. */
    memmove(p->range_off + 1, p->range_off, n * sizeof(uint32_t));
    p->range_off[0] = 0;
    p->num_ranges = (uint32_t)m->n_assignments;
    for (uint32_t e = 0; e < n; e++) {
        p->native_loads[llep__plan_native(p, e)] += p->loads[e];
        p->total += p->loads[e];
    }
    for (size_t i = 0; i < m->n_transfers; i++) {
        const LlepPb__PlanTransfer *t = m->transfers[i];

        p->transfers[i] = (llep_transfer){ .expert = t->expert, .src = t->src, .dst = t->dst };
    }
    p->num_transfers = (uint32_t)m->n_transfers;
    r = llep__plan_validate(p, err, errlen);
    return r < 0 ? -EPROTO : 0;
}

static const LlepPb__LayerInfo *find_layer(const LlepPb__LayersReply *ls, const char *name) {
    for (size_t i = 0; i < ls->n_layers; i++)
        if (ls->layers[i]->name && strcmp(ls->layers[i]->name, name) == 0)
            return ls->layers[i];
    return NULL;
}

static int verb_plan(ctl *x, char **argv) {
    LlepPb__PlanRequest pr = LLEP_PB__PLAN_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *layers = NULL;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    const LlepPb__LayerInfo *info;
    const LlepPb__PlanReply *pl;
    llep_plan_params params;
    llep_plan plan;
    char err[256];
    int r;

    pr.layer = argv[0];
    req.body_case = LLEP_PB__FRAME__BODY_PLAN;
    req.plan = &pr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_PLAN_REPLY, &reply);
    if (r)
        return r;
    pl = reply->plan_reply;
    if (!pl->plan)
        return daemon_error("layer '%s' has not run a step yet: no plan", argv[0]);
    r = get_layers(x, &layers);
    if (r)
        return r;
    info = find_layer(layers->layers_reply, argv[0]);
    if (!info || !info->desc)
        return daemon_error("layer '%s' went away", argv[0]);
    r = plan_from_message(pl->plan, info->desc->num_experts, &plan, err, sizeof(err));
    if (r < 0) {
        llep__plan_fini(&plan);
        return daemon_error("llepd sent an inconsistent plan for layer '%s': %s", argv[0], err);
    }
    if (x->json) {
        json_object *o = llep__plan_json(&plan, NULL);
        llep__plan_fini(&plan);
        return ctl_json_print(o);
    }
    llep__plan_params_default(&params);
    params.policy = (enum llep_policy)info->desc->policy;
    if (info->desc->alpha > 0)
        params.alpha = info->desc->alpha;
    if (info->desc->lambda > 0)
        params.lambda = info->desc->lambda;
    if (info->desc->min_tokens > 0)
        params.min_tokens = info->desc->min_tokens;
    printf("layer %s, step %" PRIu64 "\n", argv[0], pl->step);
    r = llep__plan_print_report(&plan, &params, stdout);
    llep__plan_fini(&plan);
    return r < 0 ? daemon_error("cannot write the plan") : 0;
}

static json_object *layer_stats_json(const LlepPb__LayerStats *l) {
    json_object *o = llep__jout_object();

    llep__jout_u64(o, "layer_id", l->layer_id);
    llep__jout_str(o, "name", l->name);
    llep__jout_u64(o, "steps", l->steps);
    llep__jout_u64(o, "ep_steps", l->ep_steps);
    llep__jout_u64(o, "llep_steps", l->llep_steps);
    llep__jout_f64(o, "imbalance_last", l->imbalance_last);
    llep__jout_f64(o, "imbalance_mean", l->imbalance_mean);
    llep__jout_f64(o, "imbalance_max", l->imbalance_max);
    llep__jout_u64(o, "latency_p50_us", l->latency_p50_us);
    llep__jout_u64(o, "latency_p99_us", l->latency_p99_us);
    llep__jout_u64(o, "tokens", l->tokens);
    llep__jout_u64(o, "weight_bytes_moved", l->weight_bytes_moved);
    llep__jout_u64(o, "token_bytes_moved", l->token_bytes_moved);
    llep__jout_u64(o, "makespan_mean_us", l->makespan_mean_us);
    llep__jout_f64(o, "balance_mean", l->balance_mean);
    llep__jout_add(o, "device_peak_memory",
                   llep__jout_u64s(l->device_peak_memory, l->n_device_peak_memory));
    return o;
}

static json_object *stats_json(const LlepPb__StatsReply *s) {
    json_object *o = llep__jout_object(), *layers = llep__jout_array();

    llep__jout_u64(o, "steps", s->steps);
    llep__jout_u64(o, "ep_steps", s->ep_steps);
    llep__jout_u64(o, "llep_steps", s->llep_steps);
    llep__jout_u64(o, "latency_p50_us", s->latency_p50_us);
    llep__jout_u64(o, "latency_p99_us", s->latency_p99_us);
    llep__jout_u64(o, "weight_bytes_moved", s->weight_bytes_moved);
    llep__jout_u64(o, "token_bytes_moved", s->token_bytes_moved);
    llep__jout_add(o, "device_peak_memory",
                   llep__jout_u64s(s->device_peak_memory, s->n_device_peak_memory));
    for (size_t i = 0; i < s->n_layers; i++)
        llep__jout_push(layers, layer_stats_json(s->layers[i]));
    llep__jout_add(o, "layers", layers);
    return o;
}

static int verb_stats(ctl *x, char **argv) {
    LlepPb__StatsRequest sr = LLEP_PB__STATS_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    const LlepPb__StatsReply *s;
    char b1[32], b2[32], b3[32], b4[32];
    int r;

    req.body_case = LLEP_PB__FRAME__BODY_STATS;
    req.stats = &sr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_STATS_REPLY, &reply);
    if (r)
        return r;
    s = reply->stats_reply;
    if (x->json)
        return ctl_json_print(stats_json(s));
    printf("steps          %" PRIu64 " (EP %" PRIu64 ", LLEP %" PRIu64 ")\n", s->steps,
           s->ep_steps, s->llep_steps);
    printf("step latency   p50 %s, p99 %s\n", ctl_fmt_us(s->latency_p50_us, b1, sizeof(b1)),
           ctl_fmt_us(s->latency_p99_us, b2, sizeof(b2)));
    printf("bytes moved    weights %s, tokens %s\n",
           ctl_fmt_bytes(s->weight_bytes_moved, b1, sizeof(b1)),
           ctl_fmt_bytes(s->token_bytes_moved, b2, sizeof(b2)));
    printf("peak memory   ");
    for (size_t i = 0; i < s->n_device_peak_memory; i++)
        printf(" %zu: %s%s", i, ctl_fmt_bytes(s->device_peak_memory[i], b1, sizeof(b1)),
               i + 1 < s->n_device_peak_memory ? "," : "");
    printf("%s\n", s->n_device_peak_memory ? "" : " -");
    if (s->n_layers == 0)
        return 0;
    /* Makespan is the slowest device's busy time per step and balance the mean device's busy
     * time over the slowest's: the figures that say whether LLEP evened the devices out. */
    printf("\n%-4s %-16s %6s %6s %6s %9s %10s %8s %10s %10s %10s\n", "ID", "NAME", "STEPS",
           "EP", "LLEP", "IMB MEAN", "MAKESPAN", "BALANCE", "P50", "P99", "W MOVED");
    for (size_t i = 0; i < s->n_layers; i++) {
        const LlepPb__LayerStats *l = s->layers[i];

        printf("%-4" PRIu32 " %-16s %6" PRIu64 " %6" PRIu64 " %6" PRIu64 " %9.3f %10s %8.3f"
               " %10s %10s %10s\n",
               l->layer_id, l->name, l->steps, l->ep_steps, l->llep_steps, l->imbalance_mean,
               ctl_fmt_us(l->makespan_mean_us, b1, sizeof(b1)), l->balance_mean,
               ctl_fmt_us(l->latency_p50_us, b2, sizeof(b2)),
               ctl_fmt_us(l->latency_p99_us, b3, sizeof(b3)),
               ctl_fmt_bytes(l->weight_bytes_moved, b4, sizeof(b4)));
    }
    printf("\npeak memory per device\n");
    for (size_t i = 0; i < s->n_layers; i++) {
        const LlepPb__LayerStats *l = s->layers[i];

        printf("  %-16s", l->name);
        for (size_t d = 0; d < l->n_device_peak_memory; d++)
            printf(" %10s", ctl_fmt_bytes(l->device_peak_memory[d], b1, sizeof(b1)));
        printf("\n");
    }
    return 0;
}

static int verb_set(ctl *x, char **argv) {
    LlepPb__SetRequest sr = LLEP_PB__SET_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    char *assign = argv[1] ? argv[1] : argv[0];
    char *layer = argv[1] ? argv[0] : NULL;
    char *eq = strchr(assign, '=');
    char key[64];
    int r;

    /* Only the form is checked here; the daemon parses the value with the same rules as its
     * config file, so llepctl cannot accept what llepd would refuse, or the reverse. */
    if (!eq || eq == assign || !eq[1])
        return usage_error("set: expected KEY=VALUE, got '%s'", assign);
    if ((size_t)(eq - assign) >= sizeof(key))
        return usage_error("set: key '%.*s' is too long", (int)(eq - assign), assign);
    memcpy(key, assign, (size_t)(eq - assign));
    key[eq - assign] = '\0';
    sr.layer = layer ? layer : "";
    sr.key = key;
    sr.value = eq + 1;
    req.body_case = LLEP_PB__FRAME__BODY_SET;
    req.set = &sr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_SET_REPLY, &reply);
    if (r)
        return r;
    if (x->json) {
        json_object *o = llep__jout_object();
        if (layer)
            llep__jout_str(o, "layer", layer);
        else
            llep__jout_add(o, "layer", NULL);
        llep__jout_str(o, "key", key);
        llep__jout_str(o, "value", reply->set_reply->value);
        return ctl_json_print(o);
    }
    if (layer)
        printf("%s of layer %s is now %s\n", key, layer, reply->set_reply->value);
    else
        printf("default %s is now %s\n", key, reply->set_reply->value);
    return 0;
}

static int verb_drain(ctl *x, char **argv) {
    LlepPb__DrainRequest dr = LLEP_PB__DRAIN_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    const LlepPb__DrainReply *d;
    int r;

    req.body_case = LLEP_PB__FRAME__BODY_DRAIN;
    req.drain = &dr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_DRAIN_REPLY, &reply);
    if (r)
        return r;
    d = reply->drain_reply;
    if (x->json) {
        json_object *o = llep__jout_object();
        llep__jout_u64(o, "steps_finished", d->steps_finished);
        llep__jout_u64(o, "submissions_refused", d->submissions_refused);
        return ctl_json_print(o);
    }
    printf("drained: %" PRIu32 " step%s finished, %" PRIu32 " submission%s refused\n",
           d->steps_finished, d->steps_finished == 1 ? "" : "s", d->submissions_refused,
           d->submissions_refused == 1 ? "" : "s");
    return 0;
}

static const char *peer_state_name(LlepPb__PeerState s) {
    switch (s) {
    case LLEP_PB__PEER_STATE__PEER_STATE_CONNECTING: return "connecting";
    case LLEP_PB__PEER_STATE__PEER_STATE_UP: return "up";
    case LLEP_PB__PEER_STATE__PEER_STATE_DOWN: return "down";
    default: return "unknown";
    }
}

static json_object *peer_json(const LlepPb__PeerInfo *v) {
    json_object *o = llep__jout_object();

    llep__jout_u64(o, "node_id", v->node_id);
    llep__jout_str(o, "address", v->address);
    llep__jout_str(o, "state", peer_state_name(v->state));
    llep__jout_bool(o, "outgoing", v->outgoing);
    llep__jout_u64(o, "rtt_last_ns", v->rtt_last_ns);
    llep__jout_u64(o, "rtt_smoothed_ns", v->rtt_smoothed_ns);
    llep__jout_u64(o, "bytes_sent", v->bytes_sent);
    llep__jout_u64(o, "bytes_received", v->bytes_received);
    if (v->seen)
        llep__jout_u64(o, "last_seen_us", v->last_seen_us);
    else
        llep__jout_add(o, "last_seen_us", NULL);
    llep__jout_u64(o, "state_us", v->state_us);
    llep__jout_u64(o, "links_up", v->links_up);
    llep__jout_str(o, "last_error", v->last_error);
    return o;
}

static json_object *peers_json(const LlepPb__PeersReply *p) {
    json_object *o = llep__jout_object(), *peers = llep__jout_array();

    llep__jout_bool(o, "clustered", p->clustered);
    if (p->clustered) {
        llep__jout_u64(o, "node_id", p->node_id);
        llep__jout_str(o, "listen_address", p->listen_address);
        llep__jout_u64(o, "heartbeat_ms", p->heartbeat_ms);
        llep__jout_u64(o, "timeout_ms", p->timeout_ms);
        llep__jout_bool(o, "authenticated", p->authenticated);
    }
    for (size_t i = 0; i < p->n_peers; i++)
        llep__jout_push(peers, peer_json(p->peers[i]));
    llep__jout_add(o, "peers", peers);
    return o;
}

static int verb_peers(ctl *x, char **argv) {
    LlepPb__PeersRequest pr = LLEP_PB__PEERS_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    const LlepPb__PeersReply *p;
    char b1[32], b2[32], b3[32], b4[32], b5[32];
    int r;

    (void)argv;
    req.body_case = LLEP_PB__FRAME__BODY_PEERS;
    req.peers = &pr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_PEERS_REPLY, &reply);
    if (r)
        return r;
    p = reply->peers_reply;
    if (x->json)
        return ctl_json_print(peers_json(p));
    if (!p->clustered) {
        printf("not in a cluster (llepd runs without --node-id and --peers)\n");
        return 0;
    }
    printf("node %" PRIu32 ", peer links on %s, heartbeat %" PRIu32 " ms, peer timeout %" PRIu32
           " ms, %s\n", p->node_id, p->listen_address, p->heartbeat_ms, p->timeout_ms,
           p->authenticated ? "authenticated with the peer secret" : "not authenticated");
    printf("%-5s %-24s %-10s %10s %10s %10s %10s %10s  %s\n", "NODE", "ADDRESS", "STATE",
           "RTT", "SRTT", "SENT", "RECEIVED", "LAST SEEN", "LAST ERROR");
    for (size_t i = 0; i < p->n_peers; i++) {
        const LlepPb__PeerInfo *v = p->peers[i];

        printf("%-5" PRIu32 " %-24s %-10s %10s %10s %10s %10s %10s  %s\n", v->node_id,
               v->address, peer_state_name(v->state),
               v->rtt_last_ns ? ctl_fmt_us(v->rtt_last_ns / 1000, b1, sizeof(b1)) : "-",
               v->rtt_smoothed_ns ? ctl_fmt_us(v->rtt_smoothed_ns / 1000, b2, sizeof(b2)) : "-",
               ctl_fmt_bytes(v->bytes_sent, b3, sizeof(b3)),
               ctl_fmt_bytes(v->bytes_received, b4, sizeof(b4)),
               v->seen ? ctl_fmt_us(v->last_seen_us, b5, sizeof(b5)) : "never",
               v->last_error && v->last_error[0] ? v->last_error : "-");
    }
    return 0;
}

/* The reply's calibration as the tools' table and JSON take it (cost-table.h). */
static void calibration_of(const LlepPb__Calibration *c, llep_calibration *cal) {
    llep_cost_model *m = &cal->model;
    size_t n = c->n_rows < c->n_rate ? c->n_rows : c->n_rate;

    memset(cal, 0, sizeof(*cal));
    snprintf(m->backend, sizeof(m->backend), "%s", c->backend);
    snprintf(m->device_name, sizeof(m->device_name), "%s", c->device_name);
    cal->devices = c->devices;
    cal->hidden = c->hidden;
    cal->inter = c->inter;
    cal->dtype = c->dtype == LLEP_PB__DTYPE__DTYPE_BF16 ? LLEP_DTYPE_BF16 : LLEP_DTYPE_F32;
    m->num_points = (uint32_t)(n < LLEP_COST_MAX_POINTS ? n : LLEP_COST_MAX_POINTS);
    for (uint32_t i = 0; i < m->num_points; i++) {
        m->rows[i] = c->rows[i];
        m->rate[i] = c->rate[i];
    }
    m->chunk_fixed_ns = c->chunk_fixed_ns;
    for (size_t k = 0; k < c->n_links && k < LLEP_LINK_KINDS; k++) {
        m->link[k].latency_ns = c->links[k]->latency_ns;
        m->link[k].ns_per_byte = c->links[k]->ns_per_byte;
        cal->measured[k] = c->links[k]->measured;
    }
    m->devices_per_gpu = c->devices_per_gpu;
    m->devices_per_node = c->devices_per_node;
    cal->elapsed_ms = c->elapsed_ms;
    cal->time = c->time;
}

/* The top rate of a calibration's curve and the rows where it is reached. */
static double top_rate(const llep_calibration *cal, uint32_t *at) {
    const llep_cost_model *m = &cal->model;
    double top = 0;

    *at = 0;
    for (uint32_t i = 0; i < m->num_points; i++)
        if (m->rate[i] > top) {
            top = m->rate[i];
            *at = m->rows[i];
        }
    return top;
}

/* One expert's copy between logical devices of one physical device (the spill a step pays
 * most often), in ns: what the shape's calibration measured with copies of that size. */
static double expert_copy_ns(const llep_calibration *cal) {
    const llep_cost_link *l = &cal->model.link[LLEP_LINK_GPU];
    double bytes = 3.0 * cal->hidden * cal->inter * (cal->dtype == LLEP_DTYPE_BF16 ? 2 : 4);

    return l->latency_ns + bytes * l->ns_per_byte;
}

static const char *dtype_str(LlepPb__DType d) {
    return d == LLEP_PB__DTYPE__DTYPE_BF16 ? "bf16" : "f32";
}

/* The shape calibrations: one line each (text), or "shapes" (JSON). */
static void tune_shapes_print(const LlepPb__TuneReply *t) {
    if (t->n_shapes == 0) {
        printf("\nno layer shape has its own calibration\n");
        return;
    }
    printf("\nlayer shapes (their layers plan with these; the others with the above):\n");
    printf("  %-18s %-10s %14s %12s %14s  %s\n", "shape", "source", "top GFLOP/s", "1-row us",
           "expert copy us", "file");
    for (size_t i = 0; i < t->n_shapes; i++) {
        const LlepPb__TuneShape *sh = t->shapes[i];
        char shape[48];
        snprintf(shape, sizeof(shape), "%u x %u %s", sh->hidden, sh->inter, dtype_str(sh->dtype));
        if (!sh->calibration) {
            printf("  %-18s %-10s %14s %12s %14s  %s\n", shape, sh->source, "-", "-", "-",
                   sh->path[0] ? sh->path : "-");
            continue;
        }
        llep_calibration cal;
        uint32_t at;
        calibration_of(sh->calibration, &cal);
        double top = top_rate(&cal, &at);
        char topbuf[32];
        snprintf(topbuf, sizeof(topbuf), "%.1f (%u)", top, at);
        printf("  %-18s %-10s %14s %12.2f %14.2f  %s%s\n", shape, sh->source, topbuf,
               llep__calibration_chunk_ns(&cal, 1) / 1e3, expert_copy_ns(&cal) / 1e3,
               sh->path[0] ? sh->path : "-", sh->stored ? "" : " (not stored)");
    }
}

static json_object *tune_shapes_json(const LlepPb__TuneReply *t) {
    json_object *a = llep__jout_array();

    for (size_t i = 0; i < t->n_shapes; i++) {
        const LlepPb__TuneShape *sh = t->shapes[i];
        json_object *o = llep__jout_object();
        llep__jout_u64(o, "hidden", sh->hidden);
        llep__jout_u64(o, "inter", sh->inter);
        llep__jout_str(o, "dtype", dtype_str(sh->dtype));
        llep__jout_str(o, "source", sh->source);
        llep__jout_str(o, "path", sh->path);
        llep__jout_bool(o, "stored", sh->stored);
        if (sh->calibration) {
            llep_calibration cal;
            uint32_t at;
            calibration_of(sh->calibration, &cal);
            double top = top_rate(&cal, &at);
            llep__jout_f64(o, "top_rate_flops_per_ns", top);
            llep__jout_u64(o, "top_rate_rows", at);
            llep__jout_f64(o, "chunk_1row_ns", llep__calibration_chunk_ns(&cal, 1));
            llep__jout_f64(o, "expert_copy_ns", expert_copy_ns(&cal));
            llep__jout_add(o, "calibration", llep__cost_table_object(&cal));
        }
        llep__jout_push(a, o);
    }
    return a;
}

/* `tune`: measure the devices again at the reference shape and every layer shape (admin; every
 * layer's steps wait meanwhile); `tune --show`: the calibrations in force. */
static int verb_tune(ctl *x, char **argv) {
    LlepPb__TuneRequest tr = LLEP_PB__TUNE_REQUEST__INIT;
    LlepPb__Frame req = LLEP_PB__FRAME__INIT;
    _cleanup_frame_ LlepPb__Frame *reply = NULL;
    llep_calibration cal;
    int r;

    (void)argv;
    tr.show = x->show;
    req.body_case = LLEP_PB__FRAME__BODY_TUNE;
    req.tune = &tr;
    r = ctl_request(x, &req, LLEP_PB__FRAME__BODY_TUNE_REPLY, &reply);
    if (r)
        return r;
    const LlepPb__TuneReply *t = reply->tune_reply;
    if (!t->calibration)
        return daemon_error("llepd sent no calibration");
    calibration_of(t->calibration, &cal);
    if (x->json) {
        json_object *o = llep__jout_object();
        llep__jout_str(o, "path", t->path);
        llep__jout_bool(o, "stored", t->stored);
        llep__jout_add(o, "calibration", llep__cost_table_object(&cal));
        llep__jout_add(o, "shapes", tune_shapes_json(t));
        return ctl_json_print(o);
    }
    llep__cost_table_print(stdout, &cal);
    if (t->stored)
        printf("\nstored in %s\n", t->path);
    else
        printf("\nnot stored%s%s\n", t->message && t->message[0] ? ": " : "",
               t->message && t->message[0] ? t->message : "");
    tune_shapes_print(t);
    return 0;
}

typedef struct verb {
    const char *name;
    int min_args, max_args;
    const char *args;
    const char *help;
    int (*run)(ctl *x, char **argv);
} verb;

static const verb verbs[] = {
    { "status", 0, 0, "", "version, uptime, backend, devices, clients, layers", verb_status },
    { "devices", 0, 0, "", "per-device memory, last step, foreign experts, replica cache",
      verb_devices },
    { "layers", 0, 0, "", "every layer: shape, policy, references, steps", verb_layers },
    { "experts", 1, 1, "LAYER", "per-expert load over the last steps, as bars", verb_experts },
    { "plan", 1, 1, "LAYER", "the last plan of LAYER (--json: DESIGN.md section 6)",
      verb_plan },
    { "stats", 0, 0, "", "steps, EP vs LLEP, p50/p99 latency, bytes moved, peak memory",
      verb_stats },
    { "set", 1, 2, "[LAYER] KEY=VALUE",
      "set alpha, lambda, min_tokens, policy, scale_min_tokens or planner (of LAYER, else the "
      "default)", verb_set },
    { "drain", 0, 0, "", "finish the running steps, refuse new work", verb_drain },
    { "peers", 0, 0, "", "cluster peers: state, round trip, bytes, last seen", verb_peers },
    { "load", 2, 2, "NAME DIR", "load a model's MoE layers from a checkpoint directory",
      ctl_verb_load },
    { "unload", 1, 1, "NAME", "unload a model (refused while clients hold its layers)",
      ctl_verb_unload },
    { "models", 0, 0, "", "loaded models: type, layers, shape, references, load time",
      ctl_verb_models },
    { "tune", 0, 0, "[--show]", "measure the devices' cost model again, at the reference shape "
      "and every layer shape, and store it (admin); --show: the ones in force", verb_tune },
};

static void help(void) {
    printf("Usage: %s [--socket PATH] [--json] VERB [ARG]...\n"
           "Inspect and tune a running llepd.\n\nVerbs:\n", LLEPCTL_PROG);
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        printf("  %-8s %-18s %s\n", verbs[i].name, verbs[i].args, verbs[i].help);
    printf("\nOptions:\n"
           "  -s, --socket PATH   llepd's socket (default: $LLEP_SOCKET, else\n"
           "                      %s as root, else $XDG_RUNTIME_DIR/llep/llepd.sock)\n"
           "  -j, --json          print one JSON object instead of text\n"
           "      --show          with tune: show the calibrations in force, do not measure\n"
           "  -h, --help          show this help\n"
           "  -V, --version       show the version\n\n"
           "Exit status: 0 on success, 1 when llepd refuses or cannot be reached, 2 on bad "
           "usage.\n", LLEP_SOCKET_SYSTEM);
}

int main(int argc, char **argv) {
    static const struct option options[] = {
        { "socket", required_argument, NULL, 's' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "show", no_argument, NULL, 'S' },
        { NULL, 0, NULL, 0 },
    };
    ctl x = { .conn.fd = -1 };
    const verb *v = NULL;
    int opt, nargs, r;

    while ((opt = getopt_long(argc, argv, "s:jhV", options, NULL)) != -1) {
        switch (opt) {
        case 's':
            if (!optarg[0])
                return usage_error("--socket needs a path");
            x.socket_path = optarg;
            break;
        case 'j':
            x.json = true;
            break;
        case 'S':
            x.show = true;
            break;
        case 'h':
            help();
            return 0;
        case 'V':
            printf("%s %s\n", LLEPCTL_PROG, LLEP_VERSION);
            return 0;
        default:
            fprintf(stderr, "Try '%s --help'.\n", LLEPCTL_PROG);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc)
        return usage_error("no verb given");
    for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
        if (strcmp(argv[optind], verbs[i].name) == 0)
            v = &verbs[i];
    if (!v)
        return usage_error("unknown verb '%s'", argv[optind]);
    if (x.show && v->run != verb_tune)
        return usage_error("--show goes with tune only");
    nargs = argc - optind - 1;
    if (nargs < v->min_args || nargs > v->max_args)
        return usage_error("%s takes %s%s", v->name, v->args[0] ? "" : "no arguments",
                           v->args);
    /* argv is NULL-terminated, so a verb can tell an optional argument is absent. */
    r = v->run(&x, argv + optind + 1);
    if (x.connected)
        llep__conn_close(&x.conn);
    if (r == 0 && (fflush(stdout) != 0 || ferror(stdout)))
        r = daemon_error("cannot write the output");
    return r;
}
