/* The CPU backend: P logical devices on a pool of host threads.
 *
 * Operations are queued per device and run when the engine calls sync(): the caller and the
 * pool's workers take whole devices off a shared counter and run each device's queue in
 * order, so a device's operations never run concurrently with each other while different
 * devices run in parallel. Each operation's cost is the thread CPU time it used
 * (CLOCK_THREAD_CPUTIME_ID), which is the device's busy time even when more devices than
 * cores share the machine (DESIGN.md section 7).
 *
 * A combine writes its output into a block of its device's and sync() copies it to y only when
 * every operation of that sync ran, as the CUDA backend does: a device failing during the
 * combines (the test hook below) must not leave y partly written, since y may be memory a
 * client reads directly (a device space, docs/ARCHITECTURE.md section 5.3). It costs one
 * memcpy of y per step, on the thread that calls sync().
 *
 * Freed device memory is kept in a small per-device cache and handed out again, as GPU
 * runtimes' caching allocators do: a step's buffers are much alike from one step to the next,
 * and fresh pages would cost every step its page faults. The engine's budget accounting is by
 * requested bytes and does not see the cache.
 *
 * OpenBLAS is put in single-threaded mode: its own thread pool would compete with the device
 * threads, and the CPU time of its workers would not show in the device's thread clock.
 *
 * Test hook: LLEP_TEST_FAIL_DEVICE=D@N, read at create, fails device D for good at the N-th
 * sync() (from 1) in which it has token rows gathered and expert chunks queued (a step that
 * computes on it; calibration's bare chunks do not count), as a GPU whose context took a sticky
 * error does: that sync drops D's queue and returns -EIO, and from then on every operation
 * queued on D and every allocation there fails with -EIO (device_failed() says so). With
 * D@N:combine it fails D at the N-th sync in which D has a combine queued instead (a step's
 * last sync: D's combine is dropped while the other devices' run, as when a GPU fails during
 * the combines). Only the tests set it (docs/ARCHITECTURE.md, "Test hooks"). */
#include "backend.h"
#include "xnode.h"
#include "grow.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Set by the build when the BLAS is OpenBLAS; its cblas.h is not the only one we accept. */
#ifdef LLEP_HAVE_OPENBLAS_THREADS
void openblas_set_num_threads(int num_threads);
#endif
#ifdef LLEP_HAVE_OPENBLAS_CORENAME
char *openblas_get_corename(void);
#endif

const char *llep__backend_cpu_blas_core(void) {
#ifdef LLEP_HAVE_OPENBLAS_CORENAME
    return openblas_get_corename();
#else
    return NULL;
#endif
}

enum op_kind { OP_COPY, OP_GATHER, OP_CHUNK, OP_COMBINE };

typedef struct cpu_op {
    enum op_kind kind;
    union {
        struct {
            void *dst;
            const void *src;
            size_t bytes;
        } copy;
        struct {
            void *dst;
            const void *const *src;
            size_t n, row_bytes;
        } gather;
        llep_expert_chunk chunk;
        llep_combine combine;
    } u;
} cpu_op;

/* A combine's output, staged in a block of its device until sync() publishes it. */
typedef struct staged_out {
    void *y, *stage;
    size_t bytes;
} staged_out;

/* Freed blocks kept per device; beyond either limit the oldest are released. */
#define CACHE_BLOCKS 16u
#define CACHE_BYTES (UINT64_C(1) << 30)
/* Each block starts with a header that records its capacity, one alignment unit long. */
#define BLOCK_HEADER 64u

typedef struct cpu_device {
    cpu_op *ops;
    size_t n, cap;
    uint64_t busy_ns;
    void *cache[CACHE_BLOCKS];  /* block bases, oldest first */
    uint32_t ncache;
    uint64_t cache_bytes;
    bool failed;                /* the test hook failed it: nothing runs here any more */
    staged_out *outs;           /* its combines' outputs since the last sync */
    size_t nouts, capouts;
} cpu_device;

typedef struct cpu_backend {
    llep_backend base;
    cpu_device *dev;
    pthread_t *workers;
    uint32_t nworkers;
    pthread_mutex_t lock;
    pthread_cond_t start, done;
    uint64_t generation;  /* bumped by sync() to start the workers */
    uint32_t active;      /* workers still in the current generation */
    uint32_t tickets;     /* workers the current generation still wants */
    int stop;
    atomic_uint next_dev; /* next device to take in the current generation */
    /* LLEP_TEST_FAIL_DEVICE: the device to fail (UINT32_MAX: none), at its fail_at-th sync
     * computing a step (fail_combine: combining one); chunk_syncs counts those so far. */
    uint32_t fail_dev;
    bool fail_combine;
    uint64_t fail_at, chunk_syncs;
    bool queue_failed;    /* an operation could not be queued since the last sync */
} cpu_backend;

static uint64_t thread_cpu_ns(void) {
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void run_op(const cpu_op *op) {
    switch (op->kind) {
    case OP_COPY:
        memcpy(op->u.copy.dst, op->u.copy.src, op->u.copy.bytes);
        break;
    case OP_GATHER:
        llep__k_gather_rows(op->u.gather.dst, op->u.gather.src, op->u.gather.n,
                            op->u.gather.row_bytes);
        break;
    case OP_CHUNK:
        llep__k_expert_ffn(&op->u.chunk);
        break;
    case OP_COMBINE:
        llep__k_combine(&op->u.combine);
        break;
    }
}

static void run_device(cpu_device *d) {
    for (size_t i = 0; i < d->n; i++) {
        uint64_t t0 = thread_cpu_ns();
        run_op(&d->ops[i]);
        d->busy_ns += thread_cpu_ns() - t0;
    }
}

/* Takes devices off the shared counter until none is left. */
static void run_devices(cpu_backend *b) {
    for (;;) {
        uint32_t d = atomic_fetch_add(&b->next_dev, 1);
        if (d >= b->base.num_devices)
            return;
        run_device(&b->dev[d]);
    }
}

static void *worker_main(void *arg) {
    cpu_backend *b = arg;

    /* Generation 0 is the one before the first sync(): a worker that starts late must still
     * see that sync's generation as new. */
    uint64_t seen = 0;

    pthread_mutex_lock(&b->lock);
    for (;;) {
        /* A generation that wants fewer workers than there are leaves the rest asleep; a
         * worker that wakes without a ticket skips that generation. */
        while (!b->stop && (b->generation == seen || b->tickets == 0)) {
            seen = b->generation;
            pthread_cond_wait(&b->start, &b->lock);
        }
        if (b->stop)
            break;
        seen = b->generation;
        b->tickets--;
        pthread_mutex_unlock(&b->lock);
        run_devices(b);
        pthread_mutex_lock(&b->lock);
        if (--b->active == 0)
            pthread_cond_signal(&b->done);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

static void cpu_destroy(llep_backend *base) {
    cpu_backend *b = (cpu_backend *)base;

    if (!b)
        return;
    pthread_mutex_lock(&b->lock);
    b->stop = 1;
    pthread_cond_broadcast(&b->start);
    pthread_mutex_unlock(&b->lock);
    for (uint32_t i = 0; i < b->nworkers; i++)
        pthread_join(b->workers[i], NULL);
    pthread_cond_destroy(&b->done);
    pthread_cond_destroy(&b->start);
    pthread_mutex_destroy(&b->lock);
    if (b->dev)
        for (uint32_t d = 0; d < b->base.num_devices; d++) {
            free(b->dev[d].ops);
            for (size_t i = 0; i < b->dev[d].nouts; i++)
                free((char *)b->dev[d].outs[i].stage - BLOCK_HEADER);
            free(b->dev[d].outs);
            for (uint32_t i = 0; i < b->dev[d].ncache; i++)
                free(b->dev[d].cache[i]);
        }
    free(b->dev);
    free(b->workers);
    free(b);
}

/* LLEP_TEST_FAIL_DEVICE=D@N or D@N:combine (see the top of the file); anything else leaves
 * devices alone. */
static void read_fail_hook(cpu_backend *b) {
    const char *v = getenv("LLEP_TEST_FAIL_DEVICE");
    unsigned dev;
    uint64_t at;
    int end = 0;

    b->fail_dev = UINT32_MAX;
    if (v && sscanf(v, "%u@%" SCNu64 "%n", &dev, &at, &end) == 2 && at > 0 &&
        dev < b->base.num_devices && (v[end] == '\0' || strcmp(v + end, ":combine") == 0)) {
        b->fail_dev = dev;
        b->fail_at = at;
        b->fail_combine = v[end] != '\0';
    }
}

static uint32_t default_threads(uint32_t num_devices) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    if (ncpu < 1)
        ncpu = 1;
    return (uint64_t)ncpu < num_devices ? (uint32_t)ncpu : num_devices;
}

static int cpu_create(const llep_backend_options *opt, llep_backend **ret) {
    cpu_backend *b;

    if (!opt || opt->num_devices == 0 || !ret)
        return -EINVAL;
    b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->base.ops = &llep__backend_cpu;
    b->base.num_devices = opt->num_devices;
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->start, NULL);
    pthread_cond_init(&b->done, NULL);
    atomic_init(&b->next_dev, 0);
    b->dev = calloc(opt->num_devices, sizeof(*b->dev));
    if (!b->dev)
        goto nomem;
    read_fail_hook(b);

#ifdef LLEP_HAVE_OPENBLAS_THREADS
    openblas_set_num_threads(1);
#endif
    /* The thread that calls sync() works too, so the pool holds one thread fewer. */
    uint32_t threads = opt->threads ? opt->threads : default_threads(opt->num_devices);
    if (threads > opt->num_devices)
        threads = opt->num_devices;
    if (threads > 1) {
        b->workers = calloc(threads - 1, sizeof(*b->workers));
        if (!b->workers)
            goto nomem;
        for (uint32_t i = 0; i < threads - 1; i++) {
            if (pthread_create(&b->workers[i], NULL, worker_main, b) != 0)
                goto nomem;
            b->nworkers++;
        }
    }
    *ret = &b->base;
    return 0;

nomem:
    cpu_destroy(&b->base);
    return -ENOMEM;
}

static size_t block_cap(const void *base) {
    size_t cap;
    memcpy(&cap, base, sizeof(cap));
    return cap;
}

static void cache_drop(cpu_device *d, uint32_t i) {
    d->cache_bytes -= block_cap(d->cache[i]);
    memmove(&d->cache[i], &d->cache[i + 1], (d->ncache - i - 1) * sizeof(d->cache[0]));
    d->ncache--;
}

static int cpu_alloc(llep_backend *base, uint32_t dev, size_t bytes, void **ret) {
    cpu_backend *b = (cpu_backend *)base;
    size_t cap = (bytes + 63) & ~(size_t)63;

    if (dev >= base->num_devices || cap < bytes || cap > SIZE_MAX - BLOCK_HEADER)
        return -EINVAL;
    if (b->dev[dev].failed)
        return -EIO;
    if (cap == 0)
        cap = 64;
    /* Reuse the smallest cached block that fits without wasting more than half of it. */
    cpu_device *d = &b->dev[dev];
    uint32_t best = UINT32_MAX;
    for (uint32_t i = 0; i < d->ncache; i++) {
        size_t c = block_cap(d->cache[i]);
        if (c >= cap && c / 2 <= cap && (best == UINT32_MAX || c < block_cap(d->cache[best])))
            best = i;
    }
    char *blk;
    if (best != UINT32_MAX) {
        blk = d->cache[best];
        cache_drop(d, best);
    } else {
        blk = aligned_alloc(64, cap + BLOCK_HEADER);
        if (!blk)
            return -ENOMEM;
        memcpy(blk, &cap, sizeof(cap));
    }
    *ret = blk + BLOCK_HEADER;
    return 0;
}

static void cpu_free(llep_backend *base, uint32_t dev, void *ptr) {
    cpu_backend *b = (cpu_backend *)base;
    char *blk;

    if (!ptr)
        return;
    blk = (char *)ptr - BLOCK_HEADER;
    if (dev >= base->num_devices || block_cap(blk) > CACHE_BYTES) {
        free(blk);
        return;
    }
    cpu_device *d = &b->dev[dev];
    while (d->ncache > 0 &&
           (d->ncache == CACHE_BLOCKS || d->cache_bytes + block_cap(blk) > CACHE_BYTES)) {
        void *old = d->cache[0];
        cache_drop(d, 0); /* reads the block's header, so before free() */
        free(old);
    }
    d->cache[d->ncache++] = blk;
    d->cache_bytes += block_cap(blk);
}

static cpu_op *push(llep_backend *base, uint32_t dev) {
    cpu_backend *b = (cpu_backend *)base;

    b->queue_failed |= dev >= base->num_devices;
    if (dev >= base->num_devices)
        return NULL;
    cpu_device *d = &b->dev[dev];
    if (d->failed || llep__grow(&d->ops, &d->cap, d->n + 1, sizeof(*d->ops), 64) < 0) {
        b->queue_failed = true;
        return NULL;
    }
    return &d->ops[d->n++];
}

static int push_error(const llep_backend *base, uint32_t dev) {
    if (dev >= base->num_devices)
        return -EINVAL;
    return ((const cpu_backend *)base)->dev[dev].failed ? -EIO : -ENOMEM;
}

static int cpu_copy(llep_backend *base, uint32_t dev, void *dst, const void *src, size_t bytes) {
    cpu_op *op = push(base, dev);

    if (!op)
        return push_error(base, dev);
    op->kind = OP_COPY;
    op->u.copy.dst = dst;
    op->u.copy.src = src;
    op->u.copy.bytes = bytes;
    return 0;
}

static int cpu_gather(llep_backend *base, uint32_t dev, void *dst, const void *const *src,
                      size_t n, size_t row_bytes) {
    cpu_op *op = push(base, dev);

    if (!op)
        return push_error(base, dev);
    op->kind = OP_GATHER;
    op->u.gather.dst = dst;
    op->u.gather.src = src;
    op->u.gather.n = n;
    op->u.gather.row_bytes = row_bytes;
    return 0;
}

static int cpu_run_chunk(llep_backend *base, uint32_t dev, const llep_expert_chunk *c) {
    cpu_op *op = push(base, dev);

    if (!op)
        return push_error(base, dev);
    op->kind = OP_CHUNK;
    op->u.chunk = *c;
    return 0;
}

/* Into a block of dev's, which sync() copies to c->y when the whole sync succeeded. */
static int cpu_combine(llep_backend *base, uint32_t dev, const llep_combine *c) {
    cpu_backend *b = (cpu_backend *)base;
    size_t bytes = (size_t)c->tokens * c->hidden * (c->dtype == LLEP_DTYPE_BF16 ? 2 : 4);
    void *stage = NULL;

    b->queue_failed |= dev >= base->num_devices;
    if (dev >= base->num_devices)
        return -EINVAL;
    cpu_device *d = &b->dev[dev];
    int r = llep__grow(&d->outs, &d->capouts, d->nouts + 1, sizeof(*d->outs), 16) < 0 ? -ENOMEM
            : cpu_alloc(base, dev, bytes, &stage);
    if (r < 0) {
        b->queue_failed = true;
        return r;
    }
    cpu_op *op = push(base, dev);
    if (!op) {
        cpu_free(base, dev, stage);
        return push_error(base, dev);
    }
    op->kind = OP_COMBINE;
    op->u.combine = *c;
    op->u.combine.y = stage;
    d->outs[d->nouts++] = (staged_out){ c->y, stage, bytes };
    return 0;
}

/* The combines' outputs to their y when `ok` (every operation of the sync was queued and
 * ran), else nowhere; their blocks go back either way. */
static void publish_outputs(cpu_backend *b, bool ok) {
    for (uint32_t d = 0; d < b->base.num_devices; d++) {
        cpu_device *dv = &b->dev[d];
        for (size_t i = 0; i < dv->nouts; i++) {
            if (ok)
                memcpy(dv->outs[i].y, dv->outs[i].stage, dv->outs[i].bytes);
            cpu_free(&b->base, d, dv->outs[i].stage);
        }
        dv->nouts = 0;
    }
    b->queue_failed = false;
}

/* Work below this many FLOPs in the expert chunks runs on the calling thread alone. */
#define INLINE_FLOPS 1000000.0

/* FLOPs of the queued expert chunks (gate, up and down GEMMs: 6 D H per row). */
static double queued_flops(const cpu_backend *b) {
    double flops = 0;

    for (uint32_t d = 0; d < b->base.num_devices; d++)
        for (size_t i = 0; i < b->dev[d].n; i++) {
            const cpu_op *op = &b->dev[d].ops[i];
            if (op->kind == OP_CHUNK)
                flops += 6.0 * op->u.chunk.rows * op->u.chunk.shape.hidden *
                         op->u.chunk.shape.inter;
        }
    return flops;
}

/* Whether the device computes a step's rows in this sync (rows gathered and chunks run), or
 * with `combine`, whether it combines a step's results. */
static bool computes_step(const cpu_device *d, bool combine) {
    bool gather = false, chunk = false, comb = false;

    for (size_t i = 0; i < d->n; i++) {
        gather |= d->ops[i].kind == OP_GATHER;
        chunk |= d->ops[i].kind == OP_CHUNK;
        comb |= d->ops[i].kind == OP_COMBINE;
    }
    return combine ? comb : gather && chunk;
}

/* The test hook: the device to fail fails at its fail_at-th sync computing (or combining) a
 * step; a failed device's queue is dropped unrun. -EIO when it dropped work. */
static int apply_fail_hook(cpu_backend *b) {
    int r = 0;

    if (b->fail_dev == UINT32_MAX)
        return 0;
    cpu_device *d = &b->dev[b->fail_dev];
    if (!d->failed && computes_step(d, b->fail_combine) && ++b->chunk_syncs == b->fail_at)
        d->failed = true;
    if (d->failed && d->n > 0) {
        d->n = 0;
        r = -EIO;
    }
    return r;
}

/* Runs the queued work: this thread takes devices too, and wakes only as many workers as
 * there are other devices with work, none when the work is tiny. On an idle machine a
 * sleeping thread takes tens of microseconds to wake, more than a few-token step's work; each
 * device's busy time is its own thread CPU time either way. */
static void run_queued(cpu_backend *b) {
    llep_backend *base = &b->base;
    uint32_t busy = 0;

    for (uint32_t d = 0; d < base->num_devices; d++)
        busy += b->dev[d].n > 0;
    if (busy == 0)
        return;
    uint32_t helpers = busy - 1 < b->nworkers ? busy - 1 : b->nworkers;
    if (helpers > 0 && queued_flops(b) < INLINE_FLOPS)
        helpers = 0;

    atomic_store(&b->next_dev, 0);
    if (helpers > 0) {
        pthread_mutex_lock(&b->lock);
        b->active = helpers;
        b->tickets = helpers;
        b->generation++;
        for (uint32_t i = 0; i < helpers; i++)
            pthread_cond_signal(&b->start);
        pthread_mutex_unlock(&b->lock);
    }

    run_devices(b);

    pthread_mutex_lock(&b->lock);
    while (b->active > 0)
        pthread_cond_wait(&b->done, &b->lock);
    pthread_mutex_unlock(&b->lock);

    for (uint32_t d = 0; d < base->num_devices; d++)
        b->dev[d].n = 0;
}

static int cpu_sync(llep_backend *base) {
    cpu_backend *b = (cpu_backend *)base;
    int r = apply_fail_hook(b);

    run_queued(b);
    publish_outputs(b, r == 0 && !b->queue_failed);
    return r;
}

static uint64_t cpu_busy_ns(const llep_backend *base, uint32_t dev) {
    const cpu_backend *b = (const cpu_backend *)base;

    return dev < base->num_devices ? b->dev[dev].busy_ns : 0;
}

static int cpu_device_failed(const llep_backend *base, uint32_t dev, char *why, size_t whylen) {
    const cpu_backend *b = (const cpu_backend *)base;

    if (dev >= base->num_devices || !b->dev[dev].failed)
        return 0;
    snprintf(why, whylen, "failed by the test hook LLEP_TEST_FAIL_DEVICE");
    return 1;
}

/* The CPU's model name from /proc/cpuinfo ("" where it has none), with the BLAS kernels in
 * use, which set the GEMM rate as much as the CPU does. Every logical device is the host. */
static void cpu_describe(const llep_backend *base, uint32_t dev, char *name, size_t namelen,
                         uint32_t *physical) {
    char line[256], model[128] = "";
    FILE *f = fopen("/proc/cpuinfo", "re");
    const char *core = llep__backend_cpu_blas_core();

    (void)base;
    (void)dev;
    while (f && fgets(line, sizeof(line), f)) {
        const char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            snprintf(model, sizeof(model), "%s", colon + 1 + strspn(colon + 1, " \t"));
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
    snprintf(name, namelen, "%s%sBLAS %s", model, model[0] ? ", " : "", core ? core : "?");
    *physical = 0;
}

const llep_backend_ops llep__backend_cpu = {
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .gather = cpu_gather,
    .run_chunk = cpu_run_chunk,
    .combine = cpu_combine,
    .sync = cpu_sync,
    .busy_ns = cpu_busy_ns,
    .download = cpu_copy, /* device memory is host memory */
    .describe = cpu_describe,
    .xnode = &llep__xnode_socket,
    .device_failed = cpu_device_failed,
};
