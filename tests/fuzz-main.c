/* Standalone driver for the fuzz targets (fuzz_engine=standalone): what libFuzzer's main()
 * does, minus coverage guidance, so every target runs in every build and in CI.
 *
 *   fuzz-TARGET [-runs=N] [-seed=S] [-max_len=N] [-max_total_time=SECONDS]
 *               [-artifact_prefix=PATH] [FILE|DIR]...
 *
 * First every given file, and every regular file in every given directory (in name order),
 * is run once: the corpus replays as regression tests. Then N inputs are generated from a
 * deterministic PRNG: random bytes, or a corpus entry (or an earlier mutant) mutated a few
 * times. Each input lies in a buffer of exactly its size, so AddressSanitizer catches a read
 * one byte too far.
 *
 * When an input crashes, the fatal signal handler writes it to
 * <artifact_prefix>crash-<seed>-<run> and prints how to reproduce it: pass that file, or the
 * same -seed with -runs up to that run. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct input {
    uint8_t *data;
    size_t size;
} input;

typedef struct corpus {
    input *items;
    size_t n, cap;
} corpus;

/* Mutants kept for further mutation; a bounded pool keeps memory flat over long runs. */
#define POOL_MAX 1024u

/* The input being run, for the crash handler. */
static const uint8_t *current_data;
static size_t current_size;
static char artifact_path[4096];

static uint64_t rng_state;

/* splitmix64: tiny, fast and good enough to pick bytes and mutations. */
static uint64_t rng(void) {
    uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static size_t rng_below(size_t n) {
    return n ? (size_t)(rng() % n) : 0;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);

    if (!p) {
        fprintf(stderr, "fuzz: out of memory\n");
        exit(2);
    }
    return p;
}

static void corpus_add(corpus *c, uint8_t *data, size_t size) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        input *items = realloc(c->items, cap * sizeof(*items));

        if (!items) {
            fprintf(stderr, "fuzz: out of memory\n");
            exit(2);
        }
        c->items = items;
        c->cap = cap;
    }
    c->items[c->n++] = (input){ data, size };
}

static void corpus_free(corpus *c) {
    for (size_t i = 0; i < c->n; i++)
        free(c->items[i].data);
    free(c->items);
}

/* async-signal-safe: only write(), open(), close() and the preformatted path. */
static void write_str(int fd, const char *s) {
    if (write(fd, s, strlen(s)) < 0)
        return;
}

static void crash_handler(int sig) {
    int fd;

    if (current_data) {
        fd = open(artifact_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd >= 0) {
            if (write(fd, current_data, current_size) < 0)
                write_str(2, "fuzz: could not write the crashing input\n");
            close(fd);
            write_str(2, "fuzz: crashing input written to ");
            write_str(2, artifact_path);
            write_str(2, "; run the target with that file to reproduce\n");
        }
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void run_one(const uint8_t *data, size_t size) {
    /* Copy into an exact-size buffer so one byte past the end is outside the allocation. */
    uint8_t *copy = xmalloc(size);

    if (size)
        memcpy(copy, data, size);
    current_data = copy;
    current_size = size;
    LLVMFuzzerTestOneInput(copy, size);
    current_data = NULL;
    free(copy);
}

static int read_file(const char *path, corpus *c) {
    uint8_t *data = NULL;
    size_t size = 0, cap = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
        return -1;
    }
    for (;;) {
        ssize_t n;

        if (size == cap) {
            cap = cap ? 2 * cap : 4096;
            data = realloc(data, cap);
            if (!data) {
                fprintf(stderr, "fuzz: out of memory\n");
                exit(2);
            }
        }
        n = read(fd, data + size, cap - size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
            free(data);
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        size += (size_t)n;
    }
    close(fd);
    corpus_add(c, data, size);
    return 0;
}

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Adds a file, or every regular file directly in a directory, in name order. */
static int load_path(const char *path, corpus *c) {
    struct stat st;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *dir;
    int r = 0;

    if (stat(path, &st) < 0) {
        fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return read_file(path, c);
    dir = opendir(path);
    if (!dir) {
        fprintf(stderr, "fuzz: %s: %s\n", path, strerror(errno));
        return -1;
    }
    while ((de = readdir(dir))) {
        char *full;

        if (de->d_name[0] == '.')
            continue;
        if (asprintf(&full, "%s/%s", path, de->d_name) < 0)
            exit(2);
        if (stat(full, &st) < 0 || !S_ISREG(st.st_mode)) {
            free(full);
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 32;
            names = realloc(names, cap * sizeof(*names));
            if (!names)
                exit(2);
        }
        names[n++] = full;
    }
    closedir(dir);
    qsort(names, n, sizeof(*names), name_cmp);
    for (size_t i = 0; i < n; i++) {
        if (read_file(names[i], c) < 0)
            r = -1;
        free(names[i]);
    }
    free(names);
    return r;
}

/* Bytes that tend to sit on boundaries: lengths, varint continuation, signs, limits. */
static const uint8_t interesting[] = {
    0x00, 0x01, 0x02, 0x07, 0x08, 0x0a, 0x10, 0x1f, 0x20, 0x23, 0x2d, 0x2e, 0x30, 0x39, 0x3d,
    0x40, 0x7f, 0x80, 0x81, 0xfe, 0xff,
};

/* Applies one random mutation in place; *size may change within max_len (buf has room for
 * max_len bytes). */
static void mutate_once(uint8_t *buf, size_t *size, size_t max_len, const corpus *pool) {
    size_t n = *size;

    switch (rng_below(8)) {
    case 0:  /* flip a bit */
        if (n)
            buf[rng_below(n)] ^= (uint8_t)(1u << rng_below(8));
        break;
    case 1:  /* an interesting byte */
        if (n)
            buf[rng_below(n)] = interesting[rng_below(sizeof(interesting))];
        break;
    case 2:  /* a random byte */
        if (n)
            buf[rng_below(n)] = (uint8_t)rng();
        break;
    case 3: {  /* insert random bytes */
        size_t at = rng_below(n + 1), k = 1 + rng_below(8);

        if (n + k > max_len)
            break;
        memmove(buf + at + k, buf + at, n - at);
        for (size_t i = 0; i < k; i++)
            buf[at + i] = (uint8_t)rng();
        *size = n + k;
        break;
    }
    case 4: {  /* delete a range */
        size_t at, k;

        if (!n)
            break;
        at = rng_below(n);
        k = 1 + rng_below(n - at < 16 ? n - at : 16);
        memmove(buf + at, buf + at + k, n - at - k);
        *size = n - k;
        break;
    }
    case 5: {  /* duplicate a range: repeated frames, repeated lines */
        size_t at, k;

        if (!n)
            break;
        at = rng_below(n);
        k = 1 + rng_below(n - at);
        if (n + k > max_len)
            break;
        memmove(buf + at + k, buf + at, n - at);
        *size = n + k;
        break;
    }
    case 6:  /* truncate */
        *size = rng_below(n + 1);
        break;
    case 7: {  /* splice in part of another input */
        const input *o;
        size_t from, k, at;

        if (!pool->n)
            break;
        o = &pool->items[rng_below(pool->n)];
        if (!o->size)
            break;
        from = rng_below(o->size);
        k = 1 + rng_below(o->size - from);
        at = rng_below(n + 1);
        if (at + k > max_len)
            k = max_len - at;
        memcpy(buf + at, o->data + from, k);
        if (at + k > n)
            *size = at + k;
        break;
    }
    }
}

static bool parse_flag(const char *arg, const char *name, unsigned long long *ret) {
    size_t len = strlen(name);
    char *end;

    if (strncmp(arg, name, len) != 0 || arg[len] != '=')
        return false;
    errno = 0;
    *ret = strtoull(arg + len + 1, &end, 10);
    if (errno || *end || end == arg + len + 1) {
        fprintf(stderr, "fuzz: bad value in %s\n", arg);
        exit(2);
    }
    return true;
}

int main(int argc, char **argv) {
    unsigned long long runs = 0, seed = 1, max_len = 4096, max_time = 0, v;
    const char *prefix = "", *program = strrchr(argv[0], '/');
    corpus seeds = { 0 }, pool = { 0 };
    struct timespec t0, t1;
    uint8_t *buf;
    unsigned long long done = 0;
    double elapsed = 0;

    program = program ? program + 1 : argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (parse_flag(a, "-runs", &v))
            runs = v;
        else if (parse_flag(a, "-seed", &v))
            seed = v;
        else if (parse_flag(a, "-max_len", &v))
            max_len = v ? v : 1;
        else if (parse_flag(a, "-max_total_time", &v))
            max_time = v;
        else if (strncmp(a, "-artifact_prefix=", 17) == 0)
            prefix = a + 17;
        else if (a[0] == '-')
            fprintf(stderr, "fuzz: ignoring unknown flag %s\n", a);
        else if (load_path(a, &seeds) < 0)
            return 2;
    }

    signal(SIGABRT, crash_handler);
    signal(SIGSEGV, crash_handler);
    signal(SIGBUS, crash_handler);
    signal(SIGFPE, crash_handler);
    signal(SIGILL, crash_handler);
    clock_gettime(CLOCK_MONOTONIC, &t0);

    for (size_t i = 0; i < seeds.n; i++) {
        snprintf(artifact_path, sizeof(artifact_path), "%scrash-corpus-%zu", prefix, i);
        run_one(seeds.items[i].data, seeds.items[i].size);
    }

    /* Mutants of a corpus entry may be as long as that entry: a valid arena image is bigger
     * than the random inputs need to be. */
    for (size_t i = 0; i < seeds.n; i++)
        if (seeds.items[i].size > max_len)
            max_len = seeds.items[i].size;
    rng_state = seed;
    buf = xmalloc(max_len);
    for (; done < runs; done++) {
        size_t size;

        if (max_time && (done & 255) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if ((unsigned long long)(t1.tv_sec - t0.tv_sec) >= max_time)
                break;
        }
        /* A quarter fresh random inputs, the rest mutants of the corpus or earlier mutants. */
        if (rng_below(4) == 0 || (!seeds.n && !pool.n)) {
            size = rng_below(max_len < 256 ? max_len + 1 : 257);
            for (size_t i = 0; i < size; i++)
                buf[i] = (uint8_t)rng();
        } else {
            const corpus *from = pool.n && rng_below(2) ? &pool : &seeds;
            const input *o;
            unsigned k;

            if (!from->n)
                from = &pool;
            o = &from->items[rng_below(from->n)];
            size = o->size < max_len ? o->size : (size_t)max_len;
            memcpy(buf, o->data, size);
            k = 1 + (unsigned)rng_below(4);
            for (unsigned m = 0; m < k; m++)
                mutate_once(buf, &size, max_len, &seeds);
        }
        snprintf(artifact_path, sizeof(artifact_path), "%scrash-%llu-%llu", prefix, seed,
                 done + 1);
        run_one(buf, size);
        /* Keep some mutants so mutations can build on each other. */
        if (rng_below(16) == 0) {
            uint8_t *keep = xmalloc(size);

            memcpy(keep, buf, size);
            if (pool.n < POOL_MAX)
                corpus_add(&pool, keep, size);
            else {
                size_t i = rng_below(POOL_MAX);

                free(pool.items[i].data);
                pool.items[i] = (input){ keep, size };
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    elapsed = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%s: %zu corpus inputs, %llu generated inputs (seed %llu, max_len %llu) in %.1f s: "
           "no crash\n", program, seeds.n, done, seed, max_len, elapsed);
    free(buf);
    corpus_free(&seeds);
    corpus_free(&pool);
    return 0;
}
