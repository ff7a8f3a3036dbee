/* Steps of cluster-scope layers: moving rows, spilled weights and results between nodes
 * (cluster-step-internal.h). Over the peer links the data goes out as ClusterData chunks and
 * is reassembled here as it arrives; over the communicator of the layer's set of nodes
 * (cluster-xnode.c) it moves as one exchange of matching transfers, in the order of the
 * step's tickets. Which way a step takes is decided once every plan
 * hash is in (llepd_cstep_decide). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-step-internal.h"

/* ---- over the peer links ----------------------------------------------------------------- */

/* This node's outgoing buffers of `out` to the other nodes over the peer links. */
static void send_buffers(llepd_clayer *c, enum llep_part_buf out, int kind) {
    for (uint32_t j = 0; j < c->nodes; j++) {
        void *p;
        uint64_t n;
        if (j != c->rank && llep__part_buffer(c->part, out, j, &p, &n) == 0)
            (void)llepd_clayer_send_data(c, j, c->st->id, kind, 0, p, n);
    }
}

/* Rows and spilled weights out over the peer links. */
static void send_step_data(llepd_clayer *c) {
    llepd_cstep *st = c->st;

    send_buffers(c, LLEP_PART_ROWS_OUT, LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_ROWS);
    for (uint32_t i = 0; i < llep__part_num_weights(c->part, 1); i++) {
        const llep_part_weights *w = llep__part_weights(c->part, 1, i);
        (void)llepd_clayer_send_data(c, w->node, st->id,
                                     LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_WEIGHTS, w->expert,
                                     w->data, w->bytes);
    }
}

/* After compute, over the peer links: the results for each other node's tokens go back. */
void llepd_cstep_send_results(llepd_clayer *c) {
    send_buffers(c, LLEP_PART_RESULTS_OUT, LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_RESULTS);
}

int llepd_cstep_prepare_part(llepd_clayer *c, bool wire_device) {
    llepd_cstep *st = c->st;
    uint32_t nx = num_experts(c);
    const uint64_t **nl = malloc(c->nodes * sizeof(*nl));

    if (!nl)
        return -ENOMEM; /* the part's message stays "": the caller says out of memory */
    for (uint32_t j = 0; j < c->nodes; j++)
        nl[j] = &st->loads[(size_t)j * nx];
    int r = llep__part_set_device_wire(c->part, wire_device);
    if (r == 0)
        r = llep__part_prepare(c->part, &st->plan, nl, st->homes.batches);
    free(nl);
    return r;
}

void llepd_cstep_prepared(llepd_clayer *c, bool wire_device) {
    c->st->phase = CSTEP_DATA;
    llepd_cstep_arm_deadline(c, DATA_DEADLINE_MS);
    if (!wire_device)
        send_step_data(c);
}

/* Whether every buffer of `kind` from the other nodes is complete; copies them into the part
 * when they all are. A size that differs from what the plan says fails the step. */
int llepd_cstep_take_buffers(llepd_clayer *c, enum llep_part_buf kind, llepd_cbuf *in) {
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t j = 0; j < c->nodes; j++) {
            void *p;
            uint64_t n;
            if (j == c->rank || llep__part_buffer(c->part, kind, j, &p, &n) < 0 || n == 0)
                continue;
            if (pass == 0 && (!in[j].started || in[j].got < in[j].total))
                return 0;
            if (pass == 0 && in[j].total != n)
                return -EPROTO;
            if (pass == 1)
                memcpy(p, in[j].data, n);
        }
    return 1;
}

/* The same for the spilled weights this node computes with: one block per expert and node. */
int llepd_cstep_take_weights(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    uint32_t nw = llep__part_num_weights(c->part, 0);

    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < nw; i++) {
            const llep_part_weights *w = llep__part_weights(c->part, 0, i);
            llepd_cweights *got = NULL;
            for (uint32_t k = 0; k < st->nweights && !got; k++)
                if (st->weights[k].expert == w->expert && st->weights[k].from == w->node)
                    got = &st->weights[k];
            if (pass == 0 && (!got || !got->buf.started || got->buf.got < got->buf.total))
                return 0;
            if (pass == 0 && got->buf.total != w->bytes)
                return -EPROTO;
            if (pass == 1)
                memcpy(w->data, got->buf.data, w->bytes);
        }
    return 1;
}

/* A ClusterData chunk of the step in progress, into its rows, results or weights buffer. */
int llepd_cstep_on_data(llepd_clayer *c, uint32_t from, const LlepPb__ClusterData *d) {
    llepd_cstep *st = c->st;
    llepd_cbuf *b = NULL;
    char err[200], why[260];

    if (!st || d->step != st->id)
        return 0; /* a failed step's data still on its way */
    if (d->kind == LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_ROWS)
        b = &st->rows_in[from];
    else if (d->kind == LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_RESULTS)
        b = &st->results_in[from];
    else if (d->kind == LLEP_PB__CLUSTER_DATA_KIND__CLUSTER_DATA_WEIGHTS) {
        for (uint32_t k = 0; k < st->nweights && !b; k++)
            if (st->weights[k].expert == d->index && st->weights[k].from == from)
                b = &st->weights[k].buf;
        if (!b) {
            if (st->nweights == st->cap_weights) {
                uint32_t cap = st->cap_weights ? 2 * st->cap_weights : 8;
                llepd_cweights *v = realloc(st->weights, cap * sizeof(*v));
                if (!v) {
                    llepd_cstep_fail(c, -ENOMEM, "out of memory receiving weights");
                    return 0;
                }
                st->weights = v;
                st->cap_weights = cap;
            }
            llepd_cweights *w = &st->weights[st->nweights++];
            memset(w, 0, sizeof(*w));
            w->expert = d->index;
            w->from = from;
            b = &w->buf;
        }
    }
    if (!b)
        return 0;
    int r = llepd_cbuf_add(b, d, LLEPD_CLUSTER_MAX_BUFFER, err, sizeof(err));
    if (r < 0) {
        snprintf(why, sizeof(why), "node %u: %s", c->ids[from], err);
        llepd_cstep_fail(c, r, why);
        return 0;
    }
    return r;
}

/* ---- over the communicator --------------------------------------------------------------- */

static void add_op(llep_xnode_op *ops, uint32_t *n, uint32_t peer, int recv, void *buf,
                   uint64_t bytes) {
    if (bytes == 0)
        return;
    ops[*n].peer = peer;
    ops[*n].recv = recv;
    ops[*n].buf = buf;
    ops[*n].bytes = bytes;
    (*n)++;
}

/* The step's transfers: per peer, rows (or results) out and in, then the weight blocks in the
 * order both ends list them (engine-part.h), so that each pair matches in order. */
static uint32_t build_ops(llepd_clayer *c, bool results, llep_xnode_op *ops) {
    enum llep_part_buf out = results ? LLEP_PART_RESULTS_OUT : LLEP_PART_ROWS_OUT;
    enum llep_part_buf in = results ? LLEP_PART_RESULTS_IN : LLEP_PART_ROWS_IN;
    uint32_t n = 0, nwo = llep__part_num_weights(c->part, 1);
    uint32_t nwi = llep__part_num_weights(c->part, 0);

    for (uint32_t j = 0; j < c->nodes; j++) {
        void *p;
        uint64_t b;
        if (j == c->rank)
            continue;
        if (llep__part_buffer(c->part, out, j, &p, &b) == 0)
            add_op(ops, &n, j, 0, p, b);
        if (llep__part_buffer(c->part, in, j, &p, &b) == 0)
            add_op(ops, &n, j, 1, p, b);
        for (uint32_t i = 0; !results && i < nwo; i++) {
            const llep_part_weights *w = llep__part_weights(c->part, 1, i);
            if (w->node == j)
                add_op(ops, &n, j, 0, w->data, w->bytes);
        }
        for (uint32_t i = 0; !results && i < nwi; i++) {
            const llep_part_weights *w = llep__part_weights(c->part, 0, i);
            if (w->node == j)
                add_op(ops, &n, j, 1, w->data, w->bytes);
        }
    }
    return n;
}

void llepd_cstep_start_exchange(llepd_clayer *c, bool results) {
    llepd_cstep *st = c->st;
    uint32_t cap = 2 * c->nodes + llep__part_num_weights(c->part, 1) +
                   llep__part_num_weights(c->part, 0);
    llep_xnode_op *ops = calloc(cap, sizeof(*ops));
    char err[200], why[260];

    if (!ops) {
        llepd_cstep_fail(c, -ENOMEM, "out of memory starting the exchange");
        return;
    }
    uint32_t n = build_ops(c, results, ops);
    st->phase = results ? CSTEP_XRESULTS : CSTEP_XROWS;
    int r = llepd_cxnode_exchange(c, st->ticket + (results ? 1 : 0), ops, n, err,
                                  sizeof(err));
    free(ops);
    if (r < 0) {
        snprintf(why, sizeof(why), "%s exchange: %s", llepd_cxnode_name(c), err);
        llepd_cstep_fail(c, r, why);
    }
}

/* ---- which way --------------------------------------------------------------------------- */

/* Every hash is in and agrees: the data goes over the communicator when every node has the
 * same epoch up and the coordinator gave the step an exchange ticket (else every node skips
 * the step's tickets alike: each decides from the same hashes). A node whose communicator is
 * up while another names another epoch closes it (that node closed or never joined it, or a
 * newer one is starting) and frees its part, which the caller prepares again with host
 * buffers for the peer links. */
int llepd_cstep_decide(llepd_clayer *c) {
    llepd_cstep *st = c->st;
    uint64_t mine = st->epochs[c->rank];
    bool all_up = st->comm_up[c->rank];
    int other = -1;
    char why[160];

    st->decided = true;
    for (uint32_t j = 0; j < c->nodes; j++) {
        all_up = all_up && st->comm_up[j] && st->epochs[j] == mine;
        if (st->epochs[j] != mine && other < 0)
            other = (int)j;
    }
    if (all_up && st->ticket) {
        st->xnode = true;
        llepd_cstep_start_exchange(c, false);
        return 0;
    }
    llepd_cxnode_skip(c);
    if (!st->comm_up[c->rank])
        return 0; /* rows and weights went out with the hash */
    if (other >= 0) {
        snprintf(why, sizeof(why), "node %u has communicator epoch %" PRIu64 ", this node %"
                 PRIu64, c->ids[other], st->epochs[other], mine);
        llepd_cxnode_close(c, why, false);
    }
    llep__part_abort(c->part);
    return 1;
}
