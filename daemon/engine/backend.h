/* The device backend interface (DESIGN.md section 3).
 *
 * A backend owns P logical devices. The engine asks it for device memory, queues work on a
 * device, and waits: every queued operation runs asynchronously, in order per device (like a
 * CUDA stream), and is only guaranteed done after sync(). The engine never learns whether the
 * devices are host threads or GPUs; the operations are the kernels of moe-cpu.h, whose
 * contracts the CUDA kernels share.
 *
 * Memory budgets are not the backend's business: the engine charges every buffer it
 * allocates against the device's budget before asking the backend for it.
 *
 * One instance serves every engine of a process (devices.h: llepd's layers share its worker
 * threads, streams and handles). Its callers never call into it from two threads at once:
 * whoever queues, syncs, allocates, frees or reads busy times holds the devices' turn, so a
 * backend needs no locking of its own, and its state between steps (caches, tile buffers) is
 * shared by all layers. */
#ifndef LLEP_BACKEND_H
#define LLEP_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "moe-cpu.h"

typedef struct llep_backend llep_backend;

typedef struct llep_backend_options {
    uint32_t num_devices;
    uint32_t threads;      /* host threads for the devices' work; 0: min(P, online CPUs) */
    /* Backend-specific device spec (backend-select.h: "cuda:0,1", "cuda:0x4"); NULL: the
     * backend's default placement of the P logical devices. Read only by create(). */
    const char *devices;
    /* Set by llep__backend_select: bytes each logical device may use (free GPU memory shared
     * by the logical devices on it); 0: no figure. Backends ignore it. */
    uint64_t mem_per_device;
} llep_backend_options;

typedef struct llep_backend_ops {
    const char *name;
    int (*create)(const llep_backend_options *opt, llep_backend **ret);
    void (*destroy)(llep_backend *b);

    /* Device memory, 64-byte aligned. alloc returns 0 or -ENOMEM. */
    int (*alloc)(llep_backend *b, uint32_t dev, size_t bytes, void **ret);
    void (*free)(llep_backend *b, uint32_t dev, void *ptr);

    /* Queued on `dev`. copy: bytes from src (memory of any device, or the host) to dst on
     * dev. gather: n rows of row_bytes into dst on dev from src[i] (any device). The pointer
     * arrays and structs are read when the operation runs, so they must live until sync().
     * combine: its output reaches c->y (host memory, or a client's device space) only in a
     * sync() that returns 0 after every operation since the last sync was queued: a device
     * failing in the combines, or a combine that could not be queued, leaves every y of that
     * sync as it was (both backends stage the output and copy it at the end of sync()). */
    int (*copy)(llep_backend *b, uint32_t dev, void *dst, const void *src, size_t bytes);
    int (*gather)(llep_backend *b, uint32_t dev, void *dst, const void *const *src, size_t n,
                  size_t row_bytes);
    int (*run_chunk)(llep_backend *b, uint32_t dev, const llep_expert_chunk *c);
    int (*combine)(llep_backend *b, uint32_t dev, const llep_combine *c);

    /* Runs or waits for everything queued; returns 0 or the first error of those operations. */
    int (*sync)(llep_backend *b);

    /* Device time the device's own work has used since create, in nanoseconds. */
    uint64_t (*busy_ns)(const llep_backend *b, uint32_t dev);

    /* Optional (NULL: nothing). Device memory the backend itself takes on dev during one
     * engine step, beyond the engine's buffers (staging for dispatch and combine, tile
     * buffers for chunks), so that the engine can charge it to dev's budget: an upper bound
     * for a layer of this shape where dev computes `rows` token rows, the largest of its
     * expert chunks having max_chunk rows, and combines the results of home_tokens tokens of
     * its own batch, top_k each. */
    uint64_t (*step_overhead)(const llep_backend *b, uint32_t dev, const llep_ffn_shape *shape,
                              uint64_t rows, uint64_t home_tokens, uint32_t top_k,
                              uint32_t max_chunk);

    /* Queued on `dev`, in order with its other work: bytes of dev's memory at src into host
     * memory at dst, which must stay valid until sync(). What leaves a node in a cluster
     * step (results, spilled experts' weights) goes through it. */
    int (*download)(llep_backend *b, uint32_t dev, void *dst, const void *src, size_t bytes);

    /* Optional (NULL: unknown). What logical device dev runs on, for calibration
     * (calibrate.h) and its stored file: the hardware's name into name ("NVIDIA H200", the
     * CPU's model and BLAS kernels), and in *physical an index that logical devices on the
     * same physical device share (the GPU; every CPU device is on the host, 0). */
    void (*describe)(const llep_backend *b, uint32_t dev, char *name, size_t namelen,
                     uint32_t *physical);

    /* Optional (NULL: none). The communicator between nodes that cluster steps use to move
     * rows, weights and results between devices of different nodes (xnode.h). */
    const struct llep_xnode_ops *xnode;

    /* Optional (NULL: devices never fail). Whether device dev has failed for good: an error
     * after which its work and memory are lost (the CUDA backend: a sticky error in its GPU's
     * context; the CPU backend: its test hook, LLEP_TEST_FAIL_DEVICE). 1 with a short reason
     * in why, else 0. Asked after sync() failed (devices.h, "failed devices"). */
    int (*device_failed)(const llep_backend *b, uint32_t dev, char *why, size_t whylen);

    /* Optional (all NULL: the backend takes only host spaces, which need none of these). A
     * client's device space (docs/ARCHITECTURE.md section 5.3): memory of the client's that
     * its submissions name for x and y.
     * space_import: imports the exported allocation fd (the caller keeps and closes fd) of
     * `size` bytes living on CUDA device `gpu`, maps it for every GPU of the devices and
     * opens the client's ready event (ready, ready_len bytes; none when 0). Returns 0 with
     * the base address the operations read x from and write y to as device memory, the
     * backend's handle and its done event's handle (*done_len bytes, at most 64, into done),
     * or -ENODEV (not one of the devices' GPUs), -EINVAL (the allocation is not `size` bytes,
     * a bad event) or -ENOMEM, with a sentence in err. Called on the loop thread without the
     * turn: the backend keeps its spaces apart from its own blocks, under a lock of its own.
     * space_release: unmaps and forgets it; nothing may be using it.
     * space_wait: queued on every device's stream: what is queued after it waits for the
     * client's ready event (recorded after it wrote x). Under the turn.
     * space_signal: queued after the step's work: records the done event. Under the turn.
     * space_copy: synchronous copy of bytes between host memory and the space (either way;
     * the space side waits for the ready event first), for the server's staging of several
     * submissions into one home device; without the turn. */
    int (*space_import)(llep_backend *b, int fd, int gpu, uint64_t size, const void *ready,
                        size_t ready_len, void **ret_base, void **ret_handle, void *done,
                        size_t *done_len, char *err, size_t errlen);
    void (*space_release)(llep_backend *b, void *handle);
    int (*space_wait)(llep_backend *b, void *handle);
    int (*space_signal)(llep_backend *b, void *handle);
    int (*space_copy)(llep_backend *b, void *handle, void *dst, const void *src, size_t bytes);
} llep_backend_ops;

/* Every backend instance starts with this header. */
struct llep_backend {
    const llep_backend_ops *ops;
    uint32_t num_devices;
};

/* P logical devices on host threads; GEMMs through OpenBLAS in single-threaded mode; busy
 * time is the thread CPU time of each device's operations. */
extern const llep_backend_ops llep__backend_cpu;

/* The kernel family the BLAS picked for this CPU ("Haswell", "SkylakeX", "Prescott", ...), or
 * NULL when the BLAS does not say. */
const char *llep__backend_cpu_blas_core(void);

/* The CUDA backend's ops table is declared in backends/backend-cuda.h. */

#endif
