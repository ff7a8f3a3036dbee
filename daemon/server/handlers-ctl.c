/* Handlers of llepctl's requests: devices, layers, experts, plan, stats, set and drain. They
 * only read the loop thread's copies of the figures (scheduler.c updates them after each step)
 * and the devices' account (devices.h, under its own mutex), never an engine a step may be
 * using. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"

#include "layer.h"
#include "log.h"
#include "scheduler.h"
#include "session.h"

#define MSG_MAX 512

/* Device d's copies in the replica cache as (layer, expert) pairs into fe[0..max), highest
 * decayed load first; copies of engines that are no layer's any more are left out. */
static size_t cached_experts(const llepd_server *srv, uint32_t d, LlepPb__ForeignExpert *fe,
                             LlepPb__ForeignExpert **fep, uint64_t *owners, uint32_t *experts,
                             uint32_t max) {
    uint32_t n = llep__devices_cache_list(srv->devs, d, owners, experts, max);
    size_t k = 0;

    if (n > max)
        n = max;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < srv->nlayers; j++) {
            const llepd_layer *l = srv->layers[j];
            if (!l->engine || llep__engine_cache_owner(l->engine) != owners[i])
                continue;
            llep_pb__foreign_expert__init(&fe[k]);
            fe[k].layer_id = l->id;
            fe[k].expert = experts[i];
            fep[k] = &fe[k];
            k++;
            break;
        }
    return k;
}

void llepd_handle_devices(llepd_session *s, const LlepPb__Frame *f) {
    llepd_server *srv = s->srv;
    uint32_t np = srv->devices;
    LlepPb__DevicesReply dr = LLEP_PB__DEVICES_REPLY__INIT;
    LlepPb__DeviceInfo *info = calloc(np, sizeof(*info));
    LlepPb__DeviceInfo **ptrs = calloc(np, sizeof(*ptrs));
    char (*names)[16] = calloc(np, sizeof(*names));
    char (*why)[LLEP_DEVICES_WHY_MAX] = calloc(np, sizeof(*why));
    uint32_t nforeign = 0;

    for (uint32_t i = 0; i < srv->nlayers; i++)
        if (srv->layers[i]->have_plan)
            nforeign += srv->layers[i]->last_plan.num_transfers;
    LlepPb__ForeignExpert *fe = calloc(nforeign + 1, sizeof(*fe));
    LlepPb__ForeignExpert **fep = calloc(nforeign + 1, sizeof(*fep));
    /* The replica cache's copies: room for what the figures say now, plus slack for copies a
     * running step adds meanwhile (the list is cut to the room). */
    uint32_t ncached = 0;
    for (uint32_t d = 0; d < np && srv->devs; d++) {
        llep_device_figures fig;
        llep__devices_figures(srv->devs, d, &fig);
        ncached += fig.cache_experts + 8;
    }
    LlepPb__ForeignExpert *ce = calloc(ncached + 1, sizeof(*ce));
    LlepPb__ForeignExpert **cep = calloc(ncached + 1, sizeof(*cep));
    uint64_t *owners = calloc(ncached + 1, sizeof(*owners));
    uint32_t *experts = calloc(ncached + 1, sizeof(*experts));
    if (!info || !ptrs || !names || !why || !fe || !fep || !ce || !cep || !owners || !experts) {
        dr.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
        dr.message = (char *)"llepd is out of memory";
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_DEVICES_REPLY, &dr);
        goto out;
    }
    uint32_t k = 0;
    size_t kc = 0;
    for (uint32_t d = 0; d < np; d++) {
        LlepPb__DeviceInfo *di = &info[d];
        llep_pb__device_info__init(di);
        snprintf(names[d], sizeof(names[d]), "%.8s%u",
                 srv->backend == LLEP_BACKEND_CUDA ? "cuda" : "cpu", d);
        di->index = d;
        di->name = names[d];
        /* Every layer's weights and the running step's buffers, from the one account. */
        llep_device_figures fig = { 0 };
        if (srv->devs)
            llep__devices_figures(srv->devs, d, &fig);
        di->memory_budget = fig.budget;
        di->memory_used = fig.used;
        di->memory_peak = fig.peak;
        di->last_step_tokens = srv->last_dev_tokens[d];
        di->last_step_busy_ns = srv->last_dev_busy_ns[d];
        di->cache_bytes = fig.cache_bytes;
        di->cache_limit = fig.cache_limit;
        di->cache_hits = fig.cache_hits;
        di->cache_bytes_saved = fig.cache_saved;
        di->cache_evictions = fig.cache_evictions;
        llep_device_status st = { .served_by = d };
        if (srv->devs)
            llep__devices_status(srv->devs, d, &st);
        di->state = (char *)(!st.failed ? "ok" : st.served_by == LLEP_DEVICES_NONE ? "lost"
                                                                                 : "failed");
        di->served_by = st.served_by == LLEP_DEVICES_NONE ? d : st.served_by;
        snprintf(why[d], sizeof(why[d]), "%s", st.why);
        di->failure = why[d];
        di->cached_experts = &cep[kc];
        if (srv->devs) {
            di->n_cached_experts = cached_experts(srv, d, &ce[kc], &cep[kc], owners, experts,
                                                  (uint32_t)(ncached - kc));
            kc += di->n_cached_experts;
        }
        di->foreign_experts = &fep[k];
        for (uint32_t i = 0; i < srv->nlayers; i++) {
            const llepd_layer *l = srv->layers[i];
            if (!l->have_plan)
                continue;
            for (uint32_t t = 0; t < l->last_plan.num_transfers; t++)
                if (l->last_plan.transfers[t].dst == d) {
                    llep_pb__foreign_expert__init(&fe[k]);
                    fe[k].layer_id = l->id;
                    fe[k].expert = l->last_plan.transfers[t].expert;
                    fep[k] = &fe[k];
                    k++;
                    di->n_foreign_experts++;
                }
        }
        ptrs[d] = di;
    }
    dr.message = (char *)"";
    dr.n_devices = np;
    dr.devices = ptrs;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_DEVICES_REPLY, &dr);
out:
    free(info);
    free(ptrs);
    free(names);
    free(why);
    free(fe);
    free(fep);
    free(ce);
    free(cep);
    free(owners);
    free(experts);
}

void llepd_handle_layers(llepd_session *s, const LlepPb__Frame *f) {
    llepd_server *srv = s->srv;
    LlepPb__LayersReply lr = LLEP_PB__LAYERS_REPLY__INIT;
    uint32_t n = srv->nlayers;
    LlepPb__LayerInfo *info = calloc(n + 1, sizeof(*info));
    LlepPb__LayerInfo **ptrs = calloc(n + 1, sizeof(*ptrs));
    LlepPb__LayerDesc *descs = calloc(n + 1, sizeof(*descs));
    char (*transport)[256] = calloc(n + 1, sizeof(*transport));

    lr.message = (char *)"";
    if (!info || !ptrs || !descs || !transport) {
        lr.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
        lr.message = (char *)"llepd is out of memory";
        n = 0;
    }
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        const llepd_layer *l = srv->layers[i];
        if (l->dead || l->creating)
            continue;
        llep_pb__layer_info__init(&info[k]);
        llepd_layer_effective_desc(l, &descs[k]);
        info[k].layer_id = l->id;
        info[k].name = (char *)l->name;
        info[k].desc = &descs[k];
        info[k].refs = (uint32_t)l->refs;
        info[k].steps = l->steps;
        info[k].weight_bytes = l->engine ? llep__engine_expert_bytes(l->engine) *
                                               l->desc.num_experts : 0;
        if (l->ops)
            l->ops->describe(l, &info[k], transport[k], sizeof(transport[k]));
        ptrs[k] = &info[k];
        k++;
    }
    lr.n_layers = k;
    lr.layers = ptrs;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_LAYERS_REPLY, &lr);
    free(info);
    free(ptrs);
    free(descs);
    free(transport);
}

/* Looks a layer up by name for experts and plan; replies NOT_FOUND itself. */
static llepd_layer *named_layer(llepd_session *s, const char *name, char *err, size_t errlen) {
    llepd_layer *l = name ? llepd_layer_find(s->srv, name) : NULL;

    if (!l || l->creating)
        snprintf(err, errlen, "no layer named '%s'", name ? name : "");
    return l && !l->creating ? l : NULL;
}

void llepd_handle_experts(llepd_session *s, const LlepPb__Frame *f) {
    LlepPb__ExpertsReply er = LLEP_PB__EXPERTS_REPLY__INIT;
    char err[MSG_MAX] = "";
    llepd_layer *l = named_layer(s, f->experts->layer, err, sizeof(err));
    uint64_t *sum = NULL;

    er.message = err;
    if (!l) {
        er.status = LLEP_PB__STATUS__STATUS_NOT_FOUND;
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_EXPERTS_REPLY, &er);
        return;
    }
    uint32_t n = l->desc.num_experts;
    sum = calloc(n, sizeof(*sum));
    if (!sum) {
        er.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
        snprintf(err, sizeof(err), "llepd is out of memory");
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_EXPERTS_REPLY, &er);
        return;
    }
    uint32_t w = l->steps < LLEPD_LOAD_WINDOW ? (uint32_t)l->steps : LLEPD_LOAD_WINDOW;
    for (uint32_t i = 0; i < w; i++)
        for (uint32_t e = 0; e < n; e++)
            sum[e] += l->load_hist[(size_t)i * n + e];
    er.layer = l->name;
    er.steps = w;
    er.n_loads = n;
    er.loads = sum;
    er.n_last_loads = l->steps ? n : 0;
    er.last_loads = l->last_loads;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_EXPERTS_REPLY, &er);
    free(sum);
}

void llepd_handle_plan(llepd_session *s, const LlepPb__Frame *f) {
    LlepPb__PlanReply pr = LLEP_PB__PLAN_REPLY__INIT;
    LlepPb__Plan plan = LLEP_PB__PLAN__INIT;
    char err[MSG_MAX] = "";
    llepd_layer *l = named_layer(s, f->plan->layer, err, sizeof(err));
    LlepPb__PlanRange *ranges = NULL, **rp = NULL;
    LlepPb__PlanTransfer *xfers = NULL, **xp = NULL;

    pr.message = err;
    if (!l) {
        pr.status = LLEP_PB__STATUS__STATUS_NOT_FOUND;
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_PLAN_REPLY, &pr);
        return;
    }
    pr.layer = l->name;
    if (!l->have_plan) {
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_PLAN_REPLY, &pr); /* step 0, no plan yet */
        return;
    }
    const llep_plan *p = &l->last_plan;
    ranges = calloc(p->num_ranges + 1, sizeof(*ranges));
    rp = calloc(p->num_ranges + 1, sizeof(*rp));
    xfers = calloc(p->num_transfers + 1, sizeof(*xfers));
    xp = calloc(p->num_transfers + 1, sizeof(*xp));
    if (!ranges || !rp || !xfers || !xp) {
        pr.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
        snprintf(err, sizeof(err), "llepd is out of memory");
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_PLAN_REPLY, &pr);
        goto out;
    }
    for (uint32_t e = 0; e < p->num_experts; e++)
        for (uint32_t i = p->range_off[e]; i < p->range_off[e + 1]; i++) {
            llep_pb__plan_range__init(&ranges[i]);
            ranges[i].expert = e;
            ranges[i].device = p->ranges[i].device;
            ranges[i].start = p->ranges[i].start;
            ranges[i].end = p->ranges[i].end;
            rp[i] = &ranges[i];
        }
    for (uint32_t t = 0; t < p->num_transfers; t++) {
        llep_pb__plan_transfer__init(&xfers[t]);
        xfers[t].expert = p->transfers[t].expert;
        xfers[t].src = p->transfers[t].src;
        xfers[t].dst = p->transfers[t].dst;
        xp[t] = &xfers[t];
    }
    plan.mode = p->mode == LLEP_PLAN_LLEP ? LLEP_PB__PLAN_MODE__PLAN_MODE_LLEP
                                          : LLEP_PB__PLAN_MODE__PLAN_MODE_EP;
    plan.imbalance = p->imbalance;
    plan.capacity = p->capacity;
    plan.devices = p->num_devices;
    plan.n_device_loads = p->num_devices;
    plan.device_loads = p->device_loads;
    plan.n_assignments = p->num_ranges;
    plan.assignments = rp;
    plan.n_transfers = p->num_transfers;
    plan.transfers = xp;
    pr.step = l->last_plan_step;
    pr.plan = &plan;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_PLAN_REPLY, &pr);
out:
    free(ranges);
    free(rp);
    free(xfers);
    free(xp);
}

void llepd_handle_stats(llepd_session *s, const LlepPb__Frame *f) {
    llepd_server *srv = s->srv;
    LlepPb__StatsReply sr = LLEP_PB__STATS_REPLY__INIT;
    uint32_t n = srv->nlayers;
    LlepPb__LayerStats *ls = calloc(n + 1, sizeof(*ls));
    LlepPb__LayerStats **lp = calloc(n + 1, sizeof(*lp));

    sr.message = (char *)"";
    if (!ls || !lp) {
        sr.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
        sr.message = (char *)"llepd is out of memory";
        n = 0;
    }
    sr.steps = srv->steps;
    sr.ep_steps = srv->ep_steps;
    sr.llep_steps = srv->llep_steps;
    sr.latency_p50_us = llepd_latency_percentile(&srv->latency, 50);
    sr.latency_p99_us = llepd_latency_percentile(&srv->latency, 99);
    sr.weight_bytes_moved = srv->weight_bytes_moved;
    sr.token_bytes_moved = srv->token_bytes_moved;
    llepd_sched_device_peaks(srv);
    sr.n_device_peak_memory = srv->devices;
    sr.device_peak_memory = srv->device_peak;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        const llepd_layer *l = srv->layers[i];
        if (l->dead || l->creating)
            continue;
        llep_pb__layer_stats__init(&ls[k]);
        ls[k].layer_id = l->id;
        ls[k].name = (char *)l->name;
        ls[k].steps = l->steps;
        ls[k].ep_steps = l->ep_steps;
        ls[k].llep_steps = l->llep_steps;
        ls[k].imbalance_last = l->imbalance_last;
        ls[k].imbalance_mean = l->steps ? l->imbalance_sum / (double)l->steps : 0;
        ls[k].imbalance_max = l->imbalance_max;
        ls[k].latency_p50_us = llepd_latency_percentile(&l->latency, 50);
        ls[k].latency_p99_us = llepd_latency_percentile(&l->latency, 99);
        ls[k].tokens = l->tokens;
        ls[k].weight_bytes_moved = l->weight_bytes_moved;
        ls[k].token_bytes_moved = l->token_bytes_moved;
        ls[k].makespan_mean_us = l->steps ? l->makespan_ns_sum / l->steps / 1000 : 0;
        ls[k].balance_mean = l->steps ? l->balance_sum / (double)l->steps : 0;
        ls[k].n_device_peak_memory = srv->devices;
        ls[k].device_peak_memory = l->peak;
        lp[k] = &ls[k];
        k++;
    }
    sr.n_layers = k;
    sr.layers = lp;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_STATS_REPLY, &sr);
    free(ls);
    free(lp);
}

static void apply_setting(llepd_server *srv, llepd_layer *l, const llep_setting *st) {
    switch (st->key) {
    case LLEP_SETTING_ALPHA:
        if (l) {
            l->tun.params.alpha = st->value;
            l->tun.own_alpha = true;
        } else {
            srv->cfg.alpha = st->value;
        }
        break;
    case LLEP_SETTING_LAMBDA:
        if (l) {
            l->tun.params.lambda = st->value;
            l->tun.own_lambda = true;
        } else {
            srv->cfg.lambda = st->value;
        }
        break;
    case LLEP_SETTING_MIN_TOKENS:
        if (l) {
            l->tun.params.min_tokens = st->min_tokens;
            l->tun.own_min_tokens = true;
        } else {
            srv->cfg.min_tokens = st->min_tokens;
        }
        break;
    case LLEP_SETTING_POLICY:
        if (l) {
            l->tun.params.policy = (enum llep_policy)st->policy;
            l->tun.own_policy = true;
        } else {
            srv->default_policy = (enum llep_policy)st->policy;
        }
        break;
    case LLEP_SETTING_SCALE_MIN_TOKENS:
        if (l) {
            l->tun.params.scale_min_tokens = st->flag;
            l->tun.own_scale_min_tokens = true;
        } else {
            srv->cfg.scale_min_tokens = st->flag;
        }
        break;
    case LLEP_SETTING_PLANNER:
        if (l) {
            l->tun.params.planner = (enum llep_planner)st->planner;
            l->tun.own_planner = true;
        } else {
            srv->cfg.planner = st->planner;
        }
        break;
    }
}

void llepd_handle_set(llepd_session *s, const LlepPb__Frame *f) {
    const LlepPb__SetRequest *rq = f->set;
    LlepPb__SetReply sr = LLEP_PB__SET_REPLY__INIT;
    char err[MSG_MAX] = "", value[64] = "";
    llepd_layer *l = NULL;
    llep_setting st;
    int r = 0;

    if (rq->layer && rq->layer[0] && !(l = named_layer(s, rq->layer, err, sizeof(err))))
        r = -ENOENT;
    if (r == 0 && l && l->ops)
        r = l->ops->may_set(l, err, sizeof(err));
    if (r == 0)
        r = llep__setting_parse(rq->key ? rq->key : "", rq->value ? rq->value : "", &st, err,
                                sizeof(err));
    if (r == 0) {
        apply_setting(s->srv, l, &st);
        llep__setting_format(&st, value, sizeof(value));
        log_notice("client %llu (uid %u) set %s%s%s=%s", (unsigned long long)s->id,
                   (unsigned)s->cred.uid, l ? l->name : "", l ? " " : "", rq->key, value);
    }
    sr.status = llep__status_from_errno(r);
    sr.message = err;
    sr.value = value;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_SET_REPLY, &sr);
}

void llepd_handle_drain(llepd_session *s, const LlepPb__Frame *f) {
    if (llepd_server_drain(s->srv, s, f->id) < 0) {
        LlepPb__DrainReply dr = LLEP_PB__DRAIN_REPLY__INIT;
        dr.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
        dr.message = (char *)"llepd is out of memory";
        llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_DRAIN_REPLY, &dr);
    }
}

/* `llepctl peers`: the cluster's links (hooks.peers_*), or "not clustered". */
void llepd_handle_peers(llepd_session *s, const LlepPb__Frame *f) {
    const llepd_server *srv = s->srv;
    LlepPb__PeersReply pr = LLEP_PB__PEERS_REPLY__INIT;
    uint32_t n = srv->hooks.peers_count ? srv->hooks.peers_count(srv) : 0;
    LlepPb__PeerInfo *info = calloc(n + 1, sizeof(*info));
    LlepPb__PeerInfo **ptrs = calloc(n + 1, sizeof(*ptrs));

    pr.message = (char *)"";
    if (!info || !ptrs) {
        pr.status = LLEP_PB__STATUS__STATUS_NO_MEMORY;
        pr.message = (char *)"llepd is out of memory";
        n = 0;
    } else if (srv->hooks.peers_fill) {
        srv->hooks.peers_fill(srv, &pr, info);
    }
    for (uint32_t i = 0; i < n; i++)
        ptrs[i] = &info[i];
    pr.n_peers = n;
    pr.peers = ptrs;
    llepd_session_reply(s, f->id, LLEP_PB__FRAME__BODY_PEERS_REPLY, &pr);
    free(info);
    free(ptrs);
}
