/* llep-bench --tune: alpha, m, lambda and the replica cache size for a shape and a routing
 * scenario, measured on the bench's backend (bench-modes.h; issue 15, item 4).
 *
 * The grid is small and fixed (ALPHAS x LAMBDAS x MINS x caches). Many of its points give the
 * same plan for the scenario's loads (lambda only decides EP or LLEP; m only matters for the
 * chunks it forbids), so the points are grouped by the hash of the plan they make
 * (llep__plan_hash) and the cache setting, and each group is measured once: a step of each
 * group in turn, `repeat` rounds, each device's least busy time kept, the makespan the largest
 * of those (as every llep-bench table). A group is named by its point nearest llepd's
 * defaults. The defaults (alpha 1, lambda 1.3, m 1024, cache auto) are in the grid, so the
 * table says how far they are from the best point; --write-config writes the best point into
 * an llepd config file.
 *
 * m is in the run's tokens: give --tokens the batch per device llepd will see. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench-modes.h"
#include "config.h"
#include "plan-cost.h"

static const double alphas[] = { 1.0, 1.1, 1.25, 1.5 };
static const double lambdas[] = { 1.1, 1.3, 1.5, 2.0 };
static const uint32_t mins[] = { 1, 16, 64, 256, 1024 };
#define NA (sizeof(alphas) / sizeof(alphas[0]))
#define NL (sizeof(lambdas) / sizeof(lambdas[0]))
#define NM (sizeof(mins) / sizeof(mins[0]))
#define NC 2u   /* replica cache off, auto */
#define NPOINTS (NA * NL * NM * NC)
/* Within this of the best, a point is as good as the best on this machine's noise. */
#define NOISE 1.03

typedef struct point {
    double alpha, lambda;
    uint32_t min_tokens;
    int cache;              /* 0 off, 1 auto */
    uint64_t hash;          /* of the plan the point makes */
    uint32_t group;
} point;

typedef struct group {
    uint32_t rep;           /* the point that names it */
    uint32_t points;        /* how many grid points make this plan with this cache */
    enum llep_plan_mode mode;
    uint32_t transfers;
    uint64_t *busy;         /* [P] least over the rounds */
    uint64_t makespan_ns, weight_bytes;
} group;

/* How many of the point's settings differ from llepd's defaults: a group is named by its
 * point with the fewest, so that the advice changes no more than it must. */
static int distance(const point *p) {
    return (p->alpha != LLEP_DEFAULT_ALPHA) + (p->lambda != LLEP_DEFAULT_LAMBDA) +
           (p->min_tokens != LLEP_DEFAULT_MIN_TOKENS) + (p->cache != 1);
}

static void point_params(const llep_bench *b, const point *p, llep_plan_params *pp) {
    llep_bench planner_b = *b;

    planner_b.o.alpha = p->alpha;
    planner_b.o.lambda = p->lambda;
    planner_b.o.min_tokens = p->min_tokens;
    llep__bench_planner_params(&planner_b,
                               b->o.num_planners ? b->o.planners[0] : LLEP_BENCH_LLA, pp);
}

static void make_grid(point *pts) {
    size_t i = 0;

    for (size_t a = 0; a < NA; a++)
        for (size_t l = 0; l < NL; l++)
            for (size_t m = 0; m < NM; m++)
                for (int c = 0; c < (int)NC; c++)
                    pts[i++] = (point){ alphas[a], lambdas[l], mins[m], c, 0, 0 };
}

/* Plans every point for the routed loads and groups equal plans with equal caches. */
static uint32_t group_points(const llep_bench *b, point *pts, group *gs) {
    llep_plan plan;
    llep_cost_layer layer;
    uint32_t ng = 0;

    llep__cost_layer(&layer, b->d, b->h, sizeof(float), false);
    layer.weight_bytes = llep__engine_expert_bytes(b->eng);
    if (llep__plan_init(&plan, b->n, b->p) < 0)
        llep__bench_die("out of memory for a plan");
    for (size_t i = 0; i < NPOINTS; i++) {
        llep_plan_params pp;
        point_params(b, &pts[i], &pp);
        /* The cost planner plans with the layer's figures, which the engine fills in for a
         * step; for grouping, the same ones (the bench's f32 experts, no biases). */
        if (pp.planner == LLEP_PLANNER_COST)
            pp.cost_layer = &layer;
        int r = llep__plan_run(&plan, b->loads, &pp, NULL);
        if (r < 0)
            llep__bench_die("planning alpha %g, lambda %g, m %u: %s", pts[i].alpha,
                            pts[i].lambda, pts[i].min_tokens, strerror(-r));
        pts[i].hash = llep__plan_hash(&plan);
        uint32_t g = 0;
        while (g < ng && !(pts[gs[g].rep].hash == pts[i].hash &&
                           pts[gs[g].rep].cache == pts[i].cache))
            g++;
        if (g == ng)
            gs[ng++] = (group){ .rep = (uint32_t)i, .mode = plan.mode,
                                .transfers = plan.num_transfers };
        else if (distance(&pts[i]) < distance(&pts[gs[g].rep]))
            gs[g].rep = (uint32_t)i;
        gs[g].points++;
        pts[i].group = g;
    }
    llep__plan_fini(&plan);
    return ng;
}

static void measure_step(llep_bench *b, llep_engine *eng, const point *p, group *g,
                         uint32_t round) {
    llep_plan_params pp;
    llep_engine_stats st;

    point_params(b, p, &pp);
    llep__bench_batches(b, b->y_llep);
    if (llep__engine_step(eng, b->batches, &pp, &st) < 0)
        llep__bench_die("step failed: %s", llep__engine_error(eng));
    for (uint32_t d = 0; d < b->p && g; d++)
        if (round == 0 || st.devices[d].busy_ns < g->busy[d])
            g->busy[d] = st.devices[d].busy_ns;
    if (g)
        g->weight_bytes += st.weight_bytes_moved;
}

/* Measures every group, a step of each in turn for `repeat` rounds after one unmeasured
 * round. */
static void measure(llep_bench *b, const point *pts, group *gs, uint32_t ng) {
    llep_engine *eng[NC] = { llep__bench_engine(b, 0, 0),
                             llep__bench_engine(b, LLEP_DEVICES_CACHE_AUTO, 0) };

    for (uint32_t g = 0; g < ng; g++) {
        gs[g].busy = llep__bench_calloc(b->p, sizeof(uint64_t));
        measure_step(b, eng[pts[gs[g].rep].cache], &pts[gs[g].rep], NULL, 0);
    }
    for (uint32_t r = 0; r < b->o.repeat; r++)
        for (uint32_t g = 0; g < ng; g++) {
            const point *p = &pts[gs[g].rep];
            fprintf(stderr, "llep-bench: tune round %u/%u, plan %u/%u: alpha %g, lambda %g, "
                    "m %u, cache %s\n", r + 1, b->o.repeat, g + 1, ng, p->alpha, p->lambda,
                    p->min_tokens, p->cache ? "auto" : "off");
            measure_step(b, eng[p->cache], p, &gs[g], r);
        }
    for (uint32_t g = 0; g < ng; g++) {
        for (uint32_t d = 0; d < b->p; d++)
            if (gs[g].busy[d] > gs[g].makespan_ns)
                gs[g].makespan_ns = gs[g].busy[d];
        gs[g].weight_bytes /= b->o.repeat;
    }
    for (uint32_t i = 0; i < NC; i++)
        llep__engine_free(eng[i]);
}

static uint32_t *rank_groups(const group *gs, uint32_t ng) {
    uint32_t *order = llep__bench_calloc(ng, sizeof(*order));

    for (uint32_t i = 0; i < ng; i++)
        order[i] = i;
    for (uint32_t i = 1; i < ng; i++)  /* insertion sort: a few dozen groups */
        for (uint32_t j = i; j > 0 && gs[order[j]].makespan_ns < gs[order[j - 1]].makespan_ns;
             j--) {
            uint32_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    return order;
}

/* The group llepd's defaults fall in. */
static uint32_t default_group(const point *pts) {
    for (size_t i = 0; i < NPOINTS; i++)
        if (distance(&pts[i]) == 0)
            return pts[i].group;
    return 0;
}

static double slower(const group *g, const group *best) {
    return best->makespan_ns ? (double)g->makespan_ns / (double)best->makespan_ns : 0;
}

static void print_row(const char *label, const point *p, const group *g, const group *best) {
    printf("%-8s %6g %7g %6u %6s %5s %6u %7u %10.3f %9.3f %7.3f\n", label, p->alpha, p->lambda,
           p->min_tokens, p->cache ? "auto" : "off", g->mode == LLEP_PLAN_LLEP ? "llep" : "ep",
           g->transfers, g->points, g->makespan_ns / 1e6, g->weight_bytes / (1024.0 * 1024.0),
           slower(g, best));
}

static void print_table(const llep_bench *b, const llep_scenario *sc, const point *pts,
                        const group *gs, uint32_t ng, const uint32_t *order, uint32_t def) {
    const group *best = &gs[order[0]];

    llep__bench_print_header(b, stdout, "");
    printf("tune: scenario %s, %zu grid points (alpha x lambda x m x cache), %u distinct plans "
           "measured, %u rounds; makespan = each device's least busy time over the rounds, "
           "the largest; m in this run's tokens (%u per device)\n\n", sc->name,
           (size_t)NPOINTS, ng, b->o.repeat, b->t);
    printf("%-8s %6s %7s %6s %6s %5s %6s %7s %10s %9s %7s\n", "", "alpha", "lambda", "m",
           "cache", "mode", "xfers", "points", "makespan", "w MiB", "/best");
    for (uint32_t i = 0; i < ng && i < 8; i++) {
        char label[16];
        snprintf(label, sizeof(label), "#%u", i + 1);
        print_row(label, &pts[gs[order[i]].rep], &gs[order[i]], best);
    }
    point dp = { LLEP_DEFAULT_ALPHA, LLEP_DEFAULT_LAMBDA, LLEP_DEFAULT_MIN_TOKENS, 1, 0, def };
    print_row("defaults", &dp, &gs[def], best);
    double s = slower(&gs[def], best);
    printf("\nbest: alpha %g, lambda %g, m %u, replica cache %s; llepd's defaults take %.3fx "
           "its makespan (%s)\n", pts[best->rep].alpha, pts[best->rep].lambda,
           pts[best->rep].min_tokens, pts[best->rep].cache ? "auto" : "off", s,
           s <= NOISE ? "within this machine's 3 % noise" : "beyond the 3 % noise");
}

/* A point's figures as a JSON object, after "name": when name is not NULL. */
static void json_point(const char *name, const point *p, const group *g, const group *best,
                       const char *sep) {
    if (name)
        printf(" \"%s\": ", name);
    else
        printf("  ");
    printf("{\"alpha\": %g, \"lambda\": %g, \"min_tokens\": %u, \"replica_cache\": "
           "\"%s\", \"mode\": \"%s\", \"transfers\": %u, \"points\": %u, \"makespan_ns\": %"
           PRIu64 ", \"weight_bytes_moved\": %" PRIu64 ", \"vs_best\": %.4f}%s\n",
           p->alpha, p->lambda, p->min_tokens, p->cache ? "auto" : "off",
           g->mode == LLEP_PLAN_LLEP ? "llep" : "ep", g->transfers, g->points, g->makespan_ns,
           g->weight_bytes, slower(g, best), sep);
}

static void print_json(const llep_bench *b, const llep_scenario *sc, const point *pts,
                       const group *gs, uint32_t ng, const uint32_t *order, uint32_t def) {
    const group *best = &gs[order[0]];
    point dp = { LLEP_DEFAULT_ALPHA, LLEP_DEFAULT_LAMBDA, LLEP_DEFAULT_MIN_TOKENS, 1, 0, def };

    printf("{\"preset\": \"%s\", \"scale\": %u, \"experts\": %u, \"hidden\": %u, \"inter\": %u, "
           "\"top_k\": %u, \"devices\": %u, \"tokens_per_device\": %u, \"scenario\": \"%s\", "
           "\"repeat\": %u, \"grid_points\": %zu, \"plans_measured\": %u, \"noise\": %.2f,\n",
           b->o.preset->name, b->o.scale, b->n, b->d, b->h, b->k, b->p, b->t, sc->name,
           b->o.repeat, (size_t)NPOINTS, ng, NOISE);
    json_point("best", &pts[best->rep], best, best, ",");
    json_point("defaults", &dp, &gs[def], best, ",");
    printf(" \"ranked\": [\n");
    for (uint32_t i = 0; i < ng; i++)
        json_point(NULL, &pts[gs[order[i]].rep], &gs[order[i]], best, i + 1 < ng ? "," : "");
    printf(" ]}\n");
}

/* ---- --write-config --------------------------------------------------------------------- */

static const char *const tuned_keys[] = { "alpha", "lambda", "min-tokens", "replica-cache" };
#define NKEYS (sizeof(tuned_keys) / sizeof(tuned_keys[0]))

/* The tuned key a config line sets (as llepd reads it: blanks, '_' for '-'), or -1. */
static int line_key(const char *line, size_t len) {
    size_t i = 0, k0, k1;

    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == len || line[i] == '#')
        return -1;
    k0 = i;
    while (i < len && line[i] != '=' && line[i] != ' ' && line[i] != '\t')
        i++;
    k1 = i;
    for (size_t k = 0; k < NKEYS; k++) {
        const char *name = tuned_keys[k];
        size_t n = strlen(name), j = 0;
        if (k1 - k0 != n)
            continue;
        while (j < n && (line[k0 + j] == name[j] || (name[j] == '-' && line[k0 + j] == '_')))
            j++;
        if (j == n)
            return (int)k;
    }
    return -1;
}

/* Reads the whole file into a malloc()ed, NUL-terminated buffer; a missing file is empty. */
static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = llep__bench_calloc(LLEP_CONFIG_FILE_MAX + 1, 1);

    *len = 0;
    if (!f && errno == ENOENT)
        return buf;
    if (!f)
        llep__bench_die("--write-config: cannot read %s: %s", path, strerror(errno));
    *len = fread(buf, 1, LLEP_CONFIG_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        llep__bench_die("--write-config: cannot read %s", path);
    if (*len > LLEP_CONFIG_FILE_MAX)
        llep__bench_die("--write-config: %s is larger than a config file can be", path);
    buf[*len] = '\0';
    return buf;
}

/* The old text with each tuned key's first line replaced by its new value and later lines of
 * the same key dropped (llepd takes the last, which would undo the tuning); keys the file
 * lacks are appended. */
static void merge(FILE *out, const char *text, size_t len, char values[NKEYS][64]) {
    int done[NKEYS] = { 0 };

    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (text + i)) : len - i;
        int k = line_key(text + i, n);
        if (k < 0)
            fprintf(out, "%.*s\n", (int)n, text + i);
        else if (!done[k])
            fprintf(out, "%s = %s\n", tuned_keys[k], values[k]);
        if (k >= 0)
            done[k] = 1;
        i += n + 1;
    }
    for (size_t k = 0; k < NKEYS; k++)
        if (!done[k])
            fprintf(out, "%s = %s\n", tuned_keys[k], values[k]);
}

/* Writes the best point into the config file at path: a new file beside it, checked with
 * llepd's own parser, then renamed over it, so that a crash leaves the old file or the new
 * one and a file llepd would refuse is never installed. */
static void write_config(const char *path, const point *best) {
    char values[NKEYS][64], tmp[4096], err[512];
    size_t len;
    char *old = read_all(path, &len);
    struct stat st;
    mode_t mode = 0644;

    /* Shortest forms that read back the same. */
    for (int k = 0; k < 2; k++) {
        double v = k ? best->lambda : best->alpha;
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(values[k], sizeof(values[k]), "%.*g", prec, v);
            if (strtod(values[k], NULL) == v)
                break;
        }
    }
    snprintf(values[2], sizeof(values[2]), "%u", best->min_tokens);
    snprintf(values[3], sizeof(values[3]), "%s", best->cache ? "auto" : "off");
    if (stat(path, &st) == 0)
        mode = st.st_mode & 07777;
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp))
        llep__bench_die("--write-config: the path is too long");
    int fd = mkstemp(tmp);
    if (fd < 0)
        llep__bench_die("--write-config: cannot create a file beside %s: %s", path,
                        strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f)
        llep__bench_die("--write-config: %s", strerror(errno));
    merge(f, old, len, values);
    int bad = fflush(f) != 0 || fchmod(fd, mode) != 0 || fsync(fd) != 0;
    bad |= fclose(f) != 0;
    free(old);
    llep_config c;
    llep__config_init(&c);
    int r = bad ? -EIO : llep__config_load_file(&c, tmp, err, sizeof(err));
    llep__config_fini(&c);
    if (r < 0) {
        unlink(tmp);
        llep__bench_die("--write-config: %s not changed: %s", path,
                        bad ? "cannot write the new file" : err);
    }
    if (rename(tmp, path) < 0) {
        int e = errno;
        unlink(tmp);
        llep__bench_die("--write-config: cannot replace %s: %s", path, strerror(e));
    }
    fprintf(stderr, "llep-bench: wrote alpha = %s, lambda = %s, min-tokens = %s, "
            "replica-cache = %s into %s\n", values[0], values[1], values[2], values[3], path);
}

int llep__bench_tune(llep_bench *b) {
    const llep_scenario *sc = b->o.scenario >= 0 ? &llep__scenarios[b->o.scenario]
                                                 : llep__scenario_find("80%-4");
    point *pts = llep__bench_calloc(NPOINTS, sizeof(*pts));
    group *gs = llep__bench_calloc(NPOINTS, sizeof(*gs));

    llep__bench_route(b, sc);
    make_grid(pts);
    uint32_t ng = group_points(b, pts, gs);
    fprintf(stderr, "llep-bench: tune %s: %zu grid points make %u distinct plans to measure\n",
            sc->name, (size_t)NPOINTS, ng);
    measure(b, pts, gs, ng);
    uint32_t *order = rank_groups(gs, ng), def = default_group(pts);
    if (b->o.format == LLEP_BENCH_JSON)
        print_json(b, sc, pts, gs, ng, order, def);
    else
        print_table(b, sc, pts, gs, ng, order, def);
    if (b->o.write_config)
        write_config(b->o.write_config, &pts[gs[order[0]].rep]);
    for (uint32_t g = 0; g < ng; g++)
        free(gs[g].busy);
    free(order);
    free(gs);
    free(pts);
    return EXIT_SUCCESS;
}
