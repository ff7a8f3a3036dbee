/* Tests of the dispatch as an all-to-all (tests/dispatch.c: a model of the grouped exchange
 * that the engine does not use, kept out of the product with its tests).
 *
 * A simulated all-to-all: each home device packs tagged rows into its send buffer, blocks go
 * to their devices, receivers permute into compute order; the rows every device computes must
 * be exactly those the engine's own routing (transcribed below from engine.c) puts there, and
 * the way back must bring every slot's result to the row the combine reads. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "fixtures.h"
#include "plan.h"

typedef struct step {
    uint32_t n, p, k;
    uint32_t tokens[16];
    int32_t *idx[16];
    uint64_t *loads;
    llep_plan plan;
} step;

static uint64_t rnd_state;

static uint64_t rnd(void) {
    return xorshift_next(&rnd_state);
}

/* Routing with `hot` experts taking share of the slots (hot = 0: uniform). */
static void make_step(step *st, uint32_t n, uint32_t p, uint32_t k, uint32_t max_tokens,
                      uint32_t hot, double share, enum llep_policy policy, uint64_t min_tokens) {
    memset(st, 0, sizeof(*st));
    st->n = n;
    st->p = p;
    st->k = k;
    st->loads = calloc(n, sizeof(*st->loads));
    ck_assert_ptr_nonnull(st->loads);
    for (uint32_t h = 0; h < p; h++) {
        st->tokens[h] = (uint32_t)(rnd() % (max_tokens + 1));
        st->idx[h] = malloc(((size_t)st->tokens[h] * k + 1) * sizeof(int32_t));
        ck_assert_ptr_nonnull(st->idx[h]);
        for (size_t s = 0; s < (size_t)st->tokens[h] * k; s++) {
            int hot_pick = hot && (double)(rnd() % 1000) < share * 1000;
            int32_t e = (int32_t)(hot_pick ? rnd() % hot : rnd() % n);
            st->idx[h][s] = e;
            st->loads[e]++;
        }
    }
    llep_plan_params pp = { .alpha = 1.0, .lambda = 1.3, .min_tokens = min_tokens,
                            .policy = policy };
    ck_assert_int_eq(llep__plan_init(&st->plan, n, p), 0);
    ck_assert_int_eq(llep__plan_compute(&st->plan, st->loads, &pp), 0);
}

static void free_step(step *st) {
    for (uint32_t h = 0; h < st->p; h++)
        free(st->idx[h]);
    free(st->loads);
    llep__plan_fini(&st->plan);
}

/* The engine's routing (engine.c layout() and route_slots()): which (home, slot) each device
 * row holds, as tag = home << 32 | slot. */
static uint64_t **reference_rows(const step *st) {
    const llep_plan *pl = &st->plan;
    uint64_t **rows = calloc(st->p, sizeof(*rows));
    uint64_t *chunk_row = calloc(pl->num_ranges + 1, sizeof(*chunk_row));
    uint64_t *fill = calloc(st->p, sizeof(*fill));
    uint64_t *rank = calloc(st->n, sizeof(*rank));
    uint32_t *cur = calloc(st->n, sizeof(*cur));

    for (uint32_t i = 0; i < pl->num_ranges; i++) {
        chunk_row[i] = fill[pl->ranges[i].device];
        fill[pl->ranges[i].device] += pl->ranges[i].end - pl->ranges[i].start;
    }
    for (uint32_t d = 0; d < st->p; d++) {
        ck_assert_uint_eq(fill[d], pl->device_loads[d]);
        rows[d] = calloc(fill[d] + 1, sizeof(**rows));
    }
    for (uint32_t x = 0; x < st->n; x++)
        cur[x] = pl->range_off[x];
    for (uint32_t h = 0; h < st->p; h++)
        for (size_t s = 0; s < (size_t)st->tokens[h] * st->k; s++) {
            uint32_t x = (uint32_t)st->idx[h][s];
            uint64_t r = rank[x]++;
            uint32_t i = cur[x];
            while (r >= pl->ranges[i].end)
                i++;
            cur[x] = i;
            rows[pl->ranges[i].device][chunk_row[i] + r - pl->ranges[i].start] =
                (uint64_t)h << 32 | s;
        }
    free(chunk_row);
    free(fill);
    free(rank);
    free(cur);
    return rows;
}

static void check_dispatch(const step *st, const llep_dispatch *x) {
    uint32_t np = st->p;
    uint64_t **ref = reference_rows(st);

    /* The send matrix adds up: rows out of each home, rows into each device. */
    for (uint32_t h = 0; h < np; h++) {
        uint64_t out = 0;
        for (uint32_t d = 0; d < np; d++) {
            ck_assert_uint_eq(x->send_offsets[h * np + d], out);
            out += x->send_counts[h * np + d];
        }
        ck_assert_uint_eq(out, (uint64_t)st->tokens[h] * st->k);
    }
    for (uint32_t d = 0; d < np; d++) {
        uint64_t in = 0;
        for (uint32_t h = 0; h < np; h++) {
            ck_assert_uint_eq(x->recv_offsets[d * np + h], in);
            in += x->send_counts[h * np + d];
        }
        ck_assert_uint_eq(in, st->plan.device_loads[d]);
        ck_assert_uint_eq(x->device_rows[d], in);
    }
    /* send_slot is a permutation of each home's slots and slot_row its inverse; blocks are in
     * (expert, global order), so experts never go down inside a block. */
    for (uint32_t h = 0; h < np; h++) {
        uint64_t slots = (uint64_t)st->tokens[h] * st->k;
        for (uint64_t i = 0; i < slots; i++) {
            ck_assert_uint_lt(x->send_slot[h][i], slots);
            ck_assert_uint_eq(x->slot_row[h][x->send_slot[h][i]], i);
        }
        for (uint32_t d = 0; d < np; d++) {
            uint64_t o = x->send_offsets[h * np + d];
            for (uint64_t i = 1; i < x->send_counts[h * np + d]; i++)
                ck_assert_int_le(st->idx[h][x->send_slot[h][o + i - 1]],
                                 st->idx[h][x->send_slot[h][o + i]]);
        }
    }
    /* Dispatch: tags through send buffers, the exchange and the receivers' permutation. */
    for (uint32_t d = 0; d < np; d++) {
        uint64_t rows = x->device_rows[d];
        uint64_t *recv = calloc(rows + 1, sizeof(*recv));
        for (uint32_t h = 0; h < np; h++) {
            uint64_t o = x->send_offsets[h * np + d], ro = x->recv_offsets[d * np + h];
            for (uint64_t i = 0; i < x->send_counts[h * np + d]; i++)
                recv[ro + i] = (uint64_t)h << 32 | x->send_slot[h][o + i];
        }
        for (uint64_t j = 0; j < rows; j++) {
            ck_assert_uint_lt(x->compute_src[d][j], rows);
            ck_assert_uint_eq(recv[x->compute_src[d][j]], ref[d][j]);
        }
        free(recv);
    }
    /* Combine: device d's result of compute row j goes back into its receive-order buffer,
     * the blocks return to their homes, and slot s of home h finds its own result. */
    for (uint32_t h = 0; h < np; h++) {
        uint64_t slots = (uint64_t)st->tokens[h] * st->k;
        uint64_t *back = calloc(slots + 1, sizeof(*back));
        for (uint32_t d = 0; d < np; d++) {
            uint64_t o = x->send_offsets[h * np + d], ro = x->recv_offsets[d * np + h];
            for (uint64_t j = 0; j < x->device_rows[d]; j++) {
                uint64_t src = x->compute_src[d][j];
                if (src >= ro && src < ro + x->send_counts[h * np + d])
                    back[o + src - ro] = ref[d][j];
            }
        }
        for (uint64_t s = 0; s < slots; s++)
            ck_assert_uint_eq(back[x->slot_row[h][s]], (uint64_t)h << 32 | s);
        free(back);
    }
    for (uint32_t d = 0; d < np; d++)
        free(ref[d]);
    free(ref);
}

static void run_case(uint32_t n, uint32_t p, uint32_t k, uint32_t max_tokens, uint32_t hot,
                     double share, enum llep_policy policy, uint64_t m) {
    step st;
    llep_dispatch x;

    make_step(&st, n, p, k, max_tokens, hot, share, policy, m);
    ck_assert_int_eq(llep__dispatch_init(&x, p, k), 0);
    ck_assert_int_eq(llep__dispatch_compute(&x, &st.plan, (const int32_t *const *)st.idx,
                                            st.tokens), 0);
    check_dispatch(&st, &x);
    /* Again on the same object: the arrays are reused, the answer is the same. */
    ck_assert_int_eq(llep__dispatch_compute(&x, &st.plan, (const int32_t *const *)st.idx,
                                            st.tokens), 0);
    check_dispatch(&st, &x);
    llep__dispatch_fini(&x);
    free_step(&st);
}

START_TEST(ep_balanced) {
    rnd_state = 0x9e3779b97f4a7c15u;
    run_case(16, 4, 2, 200, 0, 0, LLEP_POLICY_EP, 8);
}
END_TEST

START_TEST(llep_one_hot_expert) {
    rnd_state = 0x1234567u;
    run_case(32, 8, 4, 300, 1, 0.95, LLEP_POLICY_LLEP, 16);
}
END_TEST

START_TEST(single_device) {
    rnd_state = 77;
    run_case(8, 1, 3, 100, 2, 0.8, LLEP_POLICY_AUTO, 4);
}
END_TEST

START_TEST(more_devices_than_experts_per_device) {
    rnd_state = 4242;
    /* M = 1: every expert is alone on its device; P > N is impossible, P = N is the edge. */
    run_case(4, 4, 2, 50, 1, 0.9, LLEP_POLICY_LLEP, 1);
}
END_TEST

START_TEST(random_steps) {
    rnd_state = 0xabcdefu + (uint64_t)_i * 7919u;
    static const uint32_t ps[] = { 1, 2, 4, 8, 16 };
    for (int it = 0; it < 25; it++) {
        uint32_t p = ps[rnd() % 5];
        uint32_t n = p * (1 + (uint32_t)(rnd() % 8));
        uint32_t k = 1 + (uint32_t)(rnd() % 4);
        uint32_t hot = (uint32_t)(rnd() % 5);
        double share = (double)(rnd() % 100) / 100.0;
        enum llep_policy pol = (enum llep_policy)(rnd() % 3);
        run_case(n, p, k, (uint32_t)(rnd() % 400), hot < n ? hot : 0, share, pol,
                 rnd() % 64);
    }
}
END_TEST

START_TEST(bad_input) {
    step st;
    llep_dispatch x;

    rnd_state = 99;
    ck_assert_int_eq(llep__dispatch_init(&x, 0, 2), -EINVAL);
    ck_assert_int_eq(llep__dispatch_init(&x, 2, 0), -EINVAL);
    make_step(&st, 8, 2, 2, 40, 0, 0, LLEP_POLICY_EP, 4);
    ck_assert_int_eq(llep__dispatch_init(&x, 2, 2), 0);
    ck_assert_int_eq(llep__dispatch_compute(&x, NULL, (const int32_t *const *)st.idx,
                                            st.tokens), -EINVAL);
    /* Routing that no longer matches the plan's loads. */
    st.tokens[0]++;
    int32_t *grown = realloc(st.idx[0], ((size_t)st.tokens[0] * 2 + 1) * sizeof(int32_t));
    ck_assert_ptr_nonnull(grown);
    st.idx[0] = grown;
    st.idx[0][st.tokens[0] * 2 - 2] = 0;
    st.idx[0][st.tokens[0] * 2 - 1] = 1;
    ck_assert_int_eq(llep__dispatch_compute(&x, &st.plan, (const int32_t *const *)st.idx,
                                            st.tokens), -EINVAL);
    /* An index outside [0, N). */
    st.idx[0][0] = 8;
    ck_assert_int_eq(llep__dispatch_compute(&x, &st.plan, (const int32_t *const *)st.idx,
                                            st.tokens), -EINVAL);
    st.idx[0][0] = -1;
    ck_assert_int_eq(llep__dispatch_compute(&x, &st.plan, (const int32_t *const *)st.idx,
                                            st.tokens), -EINVAL);
    llep__dispatch_fini(&x);
    /* A plan for another P. */
    ck_assert_int_eq(llep__dispatch_init(&x, 4, 2), 0);
    st.tokens[0]--;
    ck_assert_int_eq(llep__dispatch_compute(&x, &st.plan, (const int32_t *const *)st.idx,
                                            st.tokens), -EINVAL);
    llep__dispatch_fini(&x);
    free_step(&st);
}
END_TEST

static Suite *dispatch_suite(void) {
    Suite *s = suite_create("dispatch");
    TCase *hand = tcase_create("cases");
    TCase *rnd_tc = tcase_create("random");

    tcase_add_test(hand, ep_balanced);
    tcase_add_test(hand, llep_one_hot_expert);
    tcase_add_test(hand, single_device);
    tcase_add_test(hand, more_devices_than_experts_per_device);
    tcase_add_test(hand, bad_input);
    suite_add_tcase(s, hand);
    tcase_set_timeout(rnd_tc, 120);
    tcase_add_loop_test(rnd_tc, random_steps, 0, 4);
    suite_add_tcase(s, rnd_tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(dispatch_suite(), CK_NORMAL);
}
