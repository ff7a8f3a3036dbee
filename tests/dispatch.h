/* The dispatch of a step as an all-to-all: from a plan and each home device's routing, what
 * every home device sends to every device, in which order, and where each row lands.
 *
 * This is the host-side bookkeeping of a dispatch done with grouped ncclSend/ncclRecv (or
 * device-to-device copies): home p packs its token rows into a send buffer with the
 * permutation kernel (llep__cu_permute_rows with the rows of send_slot), one block per
 * destination device, each block in (expert, global order); device d receives the blocks of
 * homes 0..P-1 one after the other and permutes them into its compute order with
 * compute_src. Results go back along the same blocks in reverse, and home p's combine finds
 * the result of slot s at row slot_row[p][s] of its return buffer.
 *
 * The compute order on device d is the engine's (engine.c): the plan's ranges in order
 * (experts by id, each expert's ranges in token order), each range's rows in the global
 * token order of DESIGN.md section 2 (home devices in order, then token, then k). */
#ifndef LLEP_DISPATCH_H
#define LLEP_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "plan.h"

typedef struct llep_dispatch {
    uint32_t num_devices, top_k;          /* P, K */
    uint64_t *send_counts;    /* [P * P]: [p * P + d] rows home p sends to device d */
    uint64_t *send_offsets;   /* [P * P]: [p * P + d] first row of that block in p's buffer */
    uint64_t *recv_offsets;   /* [P * P]: [d * P + p] first row of p's block in d's buffer */
    uint64_t *home_slots;     /* [P] slots (tokens x K) of each home device */
    uint64_t *device_rows;    /* [P] rows each device computes (the plan's device loads) */
    /* Home p's send buffer row i holds the token row of slot send_slot[p][i] (token
     * send_slot / K); slot_row[p] is its inverse. */
    uint64_t **send_slot;     /* [P][home_slots[p]] */
    uint64_t **slot_row;      /* [P][home_slots[p]] */
    /* Device d's compute row j comes from row compute_src[d][j] of its receive buffer. */
    uint64_t **compute_src;   /* [P][device_rows[d]] */

    /* Workspace, grown as needed. */
    uint64_t *ws;
    size_t ws_cap;
    size_t *cap_home, *cap_dev;
} llep_dispatch;

/* Returns 0, -EINVAL (P or K is 0) or -ENOMEM. */
int llep__dispatch_init(llep_dispatch *x, uint32_t num_devices, uint32_t top_k);
void llep__dispatch_fini(llep_dispatch *x);

/* Computes the dispatch of one step: plan computed for these loads, topk_idx[p] the
 * [tokens[p]][K] routing of home p. Returns 0, -EINVAL (an index outside [0, N), a plan for
 * another P, or routing that does not add up to the plan's loads) or -ENOMEM. */
int llep__dispatch_compute(llep_dispatch *x, const llep_plan *plan,
                           const int32_t *const *topk_idx, const uint32_t *tokens);

#endif
