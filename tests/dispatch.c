/* The dispatch of a step as an all-to-all (dispatch.h). */
#include "dispatch.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int llep__dispatch_init(llep_dispatch *x, uint32_t num_devices, uint32_t top_k) {
    size_t p = num_devices;

    memset(x, 0, sizeof(*x));
    if (num_devices == 0 || top_k == 0 || num_devices > LLEP_MAX_DEVICES)
        return -EINVAL;
    x->num_devices = num_devices;
    x->top_k = top_k;
    x->send_counts = calloc(p * p, sizeof(uint64_t));
    x->send_offsets = calloc(p * p, sizeof(uint64_t));
    x->recv_offsets = calloc(p * p, sizeof(uint64_t));
    x->home_slots = calloc(p, sizeof(uint64_t));
    x->device_rows = calloc(p, sizeof(uint64_t));
    x->send_slot = calloc(p, sizeof(uint64_t *));
    x->slot_row = calloc(p, sizeof(uint64_t *));
    x->compute_src = calloc(p, sizeof(uint64_t *));
    x->cap_home = calloc(p, sizeof(size_t));
    x->cap_dev = calloc(p, sizeof(size_t));
    if (!x->send_counts || !x->send_offsets || !x->recv_offsets || !x->home_slots ||
        !x->device_rows || !x->send_slot || !x->slot_row || !x->compute_src || !x->cap_home ||
        !x->cap_dev) {
        llep__dispatch_fini(x);
        return -ENOMEM;
    }
    return 0;
}

void llep__dispatch_fini(llep_dispatch *x) {
    if (!x)
        return;
    for (uint32_t p = 0; p < x->num_devices; p++) {
        if (x->send_slot)
            free(x->send_slot[p]);
        if (x->slot_row)
            free(x->slot_row[p]);
        if (x->compute_src)
            free(x->compute_src[p]);
    }
    free(x->send_counts);
    free(x->send_offsets);
    free(x->recv_offsets);
    free(x->home_slots);
    free(x->device_rows);
    free(x->send_slot);
    free(x->slot_row);
    free(x->compute_src);
    free(x->ws);
    free(x->cap_home);
    free(x->cap_dev);
    memset(x, 0, sizeof(*x));
}

static int reserve(uint64_t **arr, size_t *cap, uint64_t n) {
    if (n <= *cap)
        return 0;
    if (n > SIZE_MAX / sizeof(uint64_t))
        return -ENOMEM;
    uint64_t *a = realloc(*arr, (size_t)n * sizeof(uint64_t));
    if (!a)
        return -ENOMEM;
    *arr = a;
    *cap = (size_t)n;
    return 0;
}

/* Checks the routing against the plan and sizes every array. */
static int prepare(llep_dispatch *x, const llep_plan *pl, const int32_t *const *idx,
                   const uint32_t *tokens, uint64_t *ret_total) {
    uint32_t np = x->num_devices, n = pl->num_experts;
    uint64_t total = 0;
    uint64_t *count = calloc(n, sizeof(*count));

    if (!count)
        return -ENOMEM;
    for (uint32_t p = 0; p < np; p++) {
        uint64_t slots = (uint64_t)tokens[p] * x->top_k;
        if (slots && !idx[p]) {
            free(count);
            return -EINVAL;
        }
        for (uint64_t s = 0; s < slots; s++) {
            int32_t e = idx[p][s];
            if (e < 0 || (uint32_t)e >= n) {
                free(count);
                return -EINVAL;
            }
            count[e]++;
        }
        x->home_slots[p] = slots;
        total += slots;
    }
    int same = 1;
    for (uint32_t e = 0; e < n; e++)
        same &= count[e] == pl->loads[e];
    free(count);
    if (!same)
        return -EINVAL;
    for (uint32_t p = 0; p < np; p++) {
        x->device_rows[p] = pl->device_loads[p];
        /* send_slot and slot_row always have the same capacity, cap_home[p]. */
        size_t cap = x->cap_home[p];
        if (reserve(&x->slot_row[p], &cap, x->home_slots[p]) < 0)
            return -ENOMEM;
        if (reserve(&x->send_slot[p], &x->cap_home[p], x->home_slots[p]) < 0)
            return -ENOMEM;
        if (reserve(&x->compute_src[p], &x->cap_dev[p], x->device_rows[p]) < 0)
            return -ENOMEM;
    }
    /* Workspace: per compute row its home and slot; per range its first row; per expert its
     * next rank and current range. */
    if (reserve(&x->ws, &x->ws_cap, 2 * total + pl->num_ranges + 2 * (uint64_t)n) < 0)
        return -ENOMEM;
    *ret_total = total;
    return 0;
}

int llep__dispatch_compute(llep_dispatch *x, const llep_plan *pl,
                           const int32_t *const *topk_idx, const uint32_t *tokens) {
    uint32_t np, n;
    uint64_t total;
    int r;

    if (!x || !pl || !topk_idx || !tokens || pl->num_devices != x->num_devices)
        return -EINVAL;
    np = x->num_devices;
    n = pl->num_experts;
    r = prepare(x, pl, topk_idx, tokens, &total);
    if (r < 0)
        return r;

    /* Device rows in the engine's order: ranges in plan order, appended per device. */
    uint64_t *owner = x->ws;                  /* [total]: (home << 40 | slot) by device row */
    uint64_t *chunk_row = owner + total;      /* [num_ranges] */
    uint64_t *rank = chunk_row + pl->num_ranges;
    uint64_t *cur = rank + n;
    uint64_t *dev_base = x->recv_offsets;     /* scratch until the offsets are computed */
    uint64_t base = 0;

    memset(dev_base, 0, np * sizeof(*dev_base));
    for (uint32_t i = 0; i < pl->num_ranges; i++) {
        uint32_t d = pl->ranges[i].device;
        chunk_row[i] = dev_base[d];
        dev_base[d] += pl->ranges[i].end - pl->ranges[i].start;
    }
    for (uint32_t d = 0; d < np; d++) {
        uint64_t rows = dev_base[d];
        dev_base[d] = base;
        base += rows;
    }
    if (base != total)
        return -EINVAL;
    memset(x->send_counts, 0, (size_t)np * np * sizeof(uint64_t));
    for (uint32_t e = 0; e < n; e++) {
        rank[e] = 0;
        cur[e] = pl->range_off[e];
    }
    /* Every slot, in the global order, to its device row; the owner table remembers whose
     * slot each device row is. */
    for (uint32_t p = 0; p < np; p++) {
        for (uint64_t s = 0; s < x->home_slots[p]; s++) {
            uint32_t e = (uint32_t)topk_idx[p][s];
            uint64_t rk = rank[e]++;
            uint64_t i = cur[e];
            while (rk >= pl->ranges[i].end)
                i++;
            cur[e] = i;
            uint32_t d = pl->ranges[i].device;
            owner[dev_base[d] + chunk_row[i] + (rk - pl->ranges[i].start)] =
                (uint64_t)p << 40 | s;
            x->send_counts[(size_t)p * np + d]++;
        }
    }
    /* Device rows per device, walked in order, give each (home, device) block in compute
     * order; the prefix sums place the blocks. */
    uint64_t *first_row = rank;  /* [P] device bases, kept before the offsets reuse memory */
    if (np > n) {
        first_row = malloc(np * sizeof(*first_row));
        if (!first_row)
            return -ENOMEM;
    }
    memcpy(first_row, dev_base, np * sizeof(*first_row));
    for (uint32_t p = 0; p < np; p++) {
        uint64_t off = 0;
        for (uint32_t d = 0; d < np; d++) {
            x->send_offsets[(size_t)p * np + d] = off;
            off += x->send_counts[(size_t)p * np + d];
        }
    }
    for (uint32_t d = 0; d < np; d++) {
        uint64_t off = 0;
        for (uint32_t p = 0; p < np; p++) {
            x->recv_offsets[(size_t)d * np + p] = off;
            off += x->send_counts[(size_t)p * np + d];
        }
    }
    /* cur[] is free again: the fill of each (home, device) block so far, for one device. */
    uint64_t *fill = cur;
    if (np > n) {
        fill = malloc(np * sizeof(*fill));
        if (!fill) {
            free(first_row);
            return -ENOMEM;
        }
    }
    for (uint32_t d = 0; d < np; d++) {
        memset(fill, 0, np * sizeof(*fill));
        for (uint64_t j = 0; j < x->device_rows[d]; j++) {
            uint64_t o = owner[first_row[d] + j];
            uint32_t p = (uint32_t)(o >> 40);
            uint64_t s = o & ((UINT64_C(1) << 40) - 1);
            uint64_t k = fill[p]++;
            uint64_t pos = x->send_offsets[(size_t)p * np + d] + k;
            x->send_slot[p][pos] = s;
            x->slot_row[p][s] = pos;
            x->compute_src[d][j] = x->recv_offsets[(size_t)d * np + p] + k;
        }
    }
    if (np > n) {
        free(first_row);
        free(fill);
    }
    return 0;
}
