/* llep-plan: prints the Least-Loaded Assignment plan for given per-expert loads.
 *
 *   llep-plan --devices P [--alpha A] [--min-tokens M] [--scale-min-tokens] [--lambda L]
 *             [--policy auto|ep|llep] [--devices-per-node N] [--planner lla|cost]
 *             [--cost nominal:h200|nominal:cpu|FILE] [--hidden D] [--inter H] [--json]
 *             [--loads-file F | LOAD...]
 *
 * Exit status: 0 on success, 2 for any usage error or bad input, 1 when writing fails. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib-file.h"
#include "cli.h"
#include "llep-config.h"
#include "loads.h"
#include "parse-number.h"
#include "cost.h"
#include "plan-cost.h"
#include "plan-json.h"
#include "plan-print.h"
#include "plan.h"

#define EXIT_USAGE 2

typedef struct options {
    uint32_t devices;
    int have_devices;
    llep_plan_params params;
    int json;
    const char *loads_file;
    llep_cost_model model;     /* --cost; nominal:h200 unless given */
    const char *model_name;
    bool model_measured;       /* read from a calibration file, not a nominal model */
    uint32_t hidden, inter;    /* the layer the model prices (bf16 weights, no biases) */
} options;

enum { OPT_PLANNER = 1000, OPT_COST, OPT_HIDDEN, OPT_INTER };

static const char *prog = "llep-plan";

/* A bad command line: the message, the hint to --help, and -EINVAL. */
#define usage_error(...) llep__cli_fail(prog, 1, -EINVAL, __VA_ARGS__)

static void help(void) {
    printf("Usage: %s --devices P [OPTION]... [--loads-file F | LOAD...]\n"
           "Print the Least-Loaded Assignment plan for per-expert loads (token-slots routed to\n"
           "each expert). N = the number of loads; expert e is native to device e / (N / P).\n\n"
           "  -d, --devices P       number of devices (N must be a multiple of P)\n"
           "  -a, --alpha A         capacity factor, > 0 (default %g)\n"
           "  -m, --min-tokens M    smallest chunk worth a separate GEMM (default %u)\n"
           "  -s, --scale-min-tokens  use at most capacity / P as M (small batches; not in\n"
           "                        the paper's algorithm)\n"
           "  -l, --lambda L        imbalance threshold for LLEP, > 0 (default %g)\n"
           "  -p, --policy P        auto (LLEP when imbalance >= lambda), ep or llep\n"
           "      --devices-per-node N  plan for nodes of N devices each (N divides P; device\n"
           "                        d is on node d / N): a spill stays on the native device's\n"
           "                        node when a device there can take it. Also shows the\n"
           "                        token-slots and weight transfers that cross nodes; the\n"
           "                        loads do not say where tokens come from, so each expert's\n"
           "                        slots are taken as spread evenly over the home nodes\n"
           "      --planner lla|cost  lla: the paper's Least-Loaded Assignment (default);\n"
           "                        cost: the cost-aware planner, the least modelled makespan\n"
           "                        of EP, LLA and its refinement under --cost\n"
           "      --cost MODEL      the device cost model: nominal:h200 (default) or\n"
           "                        nominal:cpu, datasheet figures, not measurements; or a\n"
           "                        calibration file: llepd's STATE_DIR/calibration.json or\n"
           "                        what `llep-bench --calibrate --json` printed\n"
           "      --hidden D, --inter H  the layer the model prices (bf16 weights; default\n"
           "                        2880 and 2880, gpt-oss-120b)\n"
           "  -f, --loads-file F    read loads separated by white space from F ('-': stdin)\n"
           "  -j, --json            print the plan as JSON (DESIGN.md section 6)\n"
           "  -h, --help            show this help\n"
           "  -V, --version         show the version\n\n"
           "Exit status: 0 on success, 2 on bad usage or input, 1 if output fails.\n",
           prog, LLEP_DEFAULT_ALPHA, LLEP_DEFAULT_MIN_TOKENS, LLEP_DEFAULT_LAMBDA);
}

/* Parses a positive finite double option, naming the option in the error. */
static int positive_double(const char *name, const char *arg, double *ret) {
    double v;

    if (llep__parse_double(arg, &v) < 0)
        return usage_error("--%s: '%s' is not a finite number", name, arg);
    if (!(v > 0))
        return usage_error("--%s must be > 0, got '%s'", name, arg);
    *ret = v;
    return 0;
}

static int parse_policy(const char *arg, enum llep_policy *ret) {
    if (strcmp(arg, "auto") == 0)
        *ret = LLEP_POLICY_AUTO;
    else if (strcmp(arg, "ep") == 0)
        *ret = LLEP_POLICY_EP;
    else if (strcmp(arg, "llep") == 0)
        *ret = LLEP_POLICY_LLEP;
    else
        return usage_error("--policy: '%s' is not one of auto, ep, llep", arg);
    return 0;
}

/* --cost: nominal:NAME, else the path of a calibration file (calib-file.h, either form). */
static int parse_cost(const char *arg, options *o) {
    llep_calibration cal;
    char err[256];

    o->model_name = arg;
    if (strncmp(arg, "nominal:", 8) == 0) {
        if (llep__cost_nominal(arg + 8, &o->model) < 0)
            return usage_error("--cost: '%s' is not nominal:h200 or nominal:cpu", arg);
        o->model_measured = false;
        return 0;
    }
    if (llep__calib_load_any(arg, &cal, err, sizeof(err)) < 0)
        return usage_error("--cost: %s (give nominal:h200, nominal:cpu or a calibration file)",
                           err);
    o->model = cal.model;
    o->model_measured = true;
    return 0;
}

static int parse_option(int c, const char *arg, options *o) {
    uint64_t v;
    int r;

    switch (c) {
    case 'd':
        r = llep__parse_u32(arg, &o->devices);
        if (r < 0)
            return usage_error("--devices: '%s' is not a device count", arg);
        if (o->devices == 0 || o->devices > LLEP_MAX_DEVICES)
            return usage_error("--devices must be between 1 and %u, got %s", LLEP_MAX_DEVICES,
                               arg);
        o->have_devices = 1;
        return 0;
    case 'a':
        return positive_double("alpha", arg, &o->params.alpha);
    case 'l':
        return positive_double("lambda", arg, &o->params.lambda);
    case 'm':
        if (llep__parse_u64(arg, &v) < 0)
            return usage_error("--min-tokens: '%s' is not a non-negative integer", arg);
        o->params.min_tokens = v;
        return 0;
    case 'p':
        return parse_policy(arg, &o->params.policy);
    case 'f':
        o->loads_file = arg;
        return 0;
    case 'j':
        o->json = 1;
        return 0;
    case 's':
        o->params.scale_min_tokens = true;
        return 0;
    case OPT_PLANNER:
        if (strcmp(arg, "lla") == 0)
            o->params.planner = LLEP_PLANNER_LLA;
        else if (strcmp(arg, "cost") == 0)
            o->params.planner = LLEP_PLANNER_COST;
        else
            return usage_error("--planner: '%s' is not lla or cost", arg);
        return 0;
    case OPT_COST:
        return parse_cost(arg, o);
    case OPT_HIDDEN:
    case OPT_INTER: {
        uint32_t *size = c == OPT_HIDDEN ? &o->hidden : &o->inter;
        if (llep__parse_u32(arg, size) < 0 || *size == 0)
            return usage_error("--%s: '%s' is not a size >= 1",
                               c == OPT_HIDDEN ? "hidden" : "inter", arg);
        return 0;
    }
    case 'n':
        if (llep__parse_u32(arg, &o->params.devices_per_node) < 0)
            return usage_error("--devices-per-node: '%s' is not a device count", arg);
        if (o->params.devices_per_node == 0)
            return usage_error("--devices-per-node must be at least 1, got %s", arg);
        return 0;
    default:
        return usage_error("unknown option");
    }
}

/* Returns 1 when the program should exit 0 at once (--help, --version), 0 to go on, or a
 * negative errno on a usage error (already reported). */
static int parse_args(int argc, char **argv, options *o) {
    static const struct option longopts[] = {
        { "devices", required_argument, NULL, 'd' },
        { "alpha", required_argument, NULL, 'a' },
        { "min-tokens", required_argument, NULL, 'm' },
        { "lambda", required_argument, NULL, 'l' },
        { "policy", required_argument, NULL, 'p' },
        { "loads-file", required_argument, NULL, 'f' },
        { "json", no_argument, NULL, 'j' },
        { "scale-min-tokens", no_argument, NULL, 's' },
        { "devices-per-node", required_argument, NULL, 'n' },
        { "planner", required_argument, NULL, OPT_PLANNER },
        { "cost", required_argument, NULL, OPT_COST },
        { "hidden", required_argument, NULL, OPT_HIDDEN },
        { "inter", required_argument, NULL, OPT_INTER },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    memset(o, 0, sizeof(*o));
    llep__plan_params_default(&o->params);
    llep__cost_nominal("h200", &o->model);
    o->model_name = "nominal:h200";
    o->hidden = o->inter = 2880;
    opterr = 0;
    /* '+' stops at the first load, so nothing after it is taken for an option. */
    while ((c = getopt_long(argc, argv, "+:d:a:m:l:p:f:jshV", longopts, NULL)) != -1) {
        if (c == 'h') {
            help();
            return 1;
        }
        if (c == 'V') {
            printf("llep-plan %s\n", LLEP_VERSION);
            return 1;
        }
        /* A negative load looks like an option to getopt; name it as the bad load it is. */
        if (c == '?' && optopt >= '0' && optopt <= '9')
            return usage_error("load '%s' is negative", argv[optind - 1]);
        if (c == '?')
            return usage_error("unknown option '%s'", argv[optind - 1]);
        if (c == ':')
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        int r = parse_option(c, optarg, o);
        if (r < 0)
            return r;
    }
    if (!o->have_devices)
        return usage_error("--devices is required");
    if (o->params.devices_per_node && o->devices % o->params.devices_per_node != 0)
        return usage_error("--devices-per-node %u does not divide --devices %u",
                           o->params.devices_per_node, o->devices);
    if (o->loads_file && optind < argc)
        return usage_error("give loads either with --loads-file or as arguments, not both");
    return 0;
}

static int read_loads(int argc, char **argv, const options *o, llep_loads *l) {
    char err[256];
    int r = 0;

    l->max = LLEP_MAX_EXPERTS;
    if (o->loads_file && strcmp(o->loads_file, "-") == 0)
        r = llep__loads_read_file(l, "/dev/stdin", err, sizeof(err));
    else if (o->loads_file)
        r = llep__loads_read_file(l, o->loads_file, err, sizeof(err));
    else
        for (int i = optind; i < argc && r == 0; i++)
            r = llep__loads_add(l, argv[i], err, sizeof(err));
    if (r == -E2BIG)
        return usage_error("too many experts: at most %u loads", LLEP_MAX_EXPERTS);
    if (r < 0)
        return usage_error("%s", err);
    if (l->n == 0)
        return usage_error("no loads given");
    if (l->n % o->devices != 0)
        return usage_error("%zu experts cannot be split evenly over %u devices (N must be a "
                           "multiple of P)", l->n, o->devices);
    return 0;
}

/* The nodes' share of each expert's slots, split evenly (the first load % K nodes get one
 * more), since per-expert loads do not say which node each slot comes from. */
static uint64_t **even_node_loads(const llep_loads *l, uint32_t k) {
    uint64_t **nl = calloc(k, sizeof(*nl));

    for (uint32_t j = 0; nl && j < k; j++) {
        nl[j] = calloc(l->n, sizeof(**nl));
        if (!nl[j]) {
            while (j > 0)
                free(nl[--j]);
            free(nl);
            return NULL;
        }
        for (size_t x = 0; x < l->n; x++)
            nl[j][x] = l->v[x] / k + (j < l->v[x] % k);
    }
    return nl;
}

/* Works out the cross-node figures of a plan made with --devices-per-node. */
static int node_figures(const options *o, const llep_plan *plan, const llep_loads *l,
                        llep_plan_nodes *ret) {
    uint32_t per = o->params.devices_per_node, k = o->devices / per;
    uint64_t **nl = even_node_loads(l, k);

    if (!nl)
        return -ENOMEM;
    ret->num_nodes = k;
    ret->devices_per_node = per;
    int r = llep__plan_node_traffic(plan, per, (const uint64_t *const *)nl, k, &ret->rows,
                                    &ret->transfers);
    for (uint32_t j = 0; j < k; j++)
        free(nl[j]);
    free(nl);
    return r;
}

static int print_plan(const options *o, const llep_plan *plan, const llep_plan_nodes *nodes) {
    if (o->json)
        return llep__jout_write(stdout, llep__plan_json(plan, nodes), LLEP_JOUT_LINE, "\n");
    int r = llep__plan_print_report(plan, &o->params, stdout);
    if (r == 0 && nodes) {
        r = llep__plan_print_nodes(plan, nodes, stdout);
        printf("  (each expert's slots taken as spread evenly over the home nodes)\n");
    }
    return r;
}

/* With --planner cost: the modelled makespans of the plan, EP and LLA, under the model. */
static int print_costs(const options *o, const llep_plan *plan, const llep_loads *l,
                       const llep_cost_layer *layer) {
    llep_plan other;
    llep_plan_params pp = o->params;
    double ns[2];
    int r = llep__plan_init(&other, (uint32_t)l->n, o->devices);

    pp.planner = LLEP_PLANNER_LLA;
    for (int i = 0; i < 2 && r == 0; i++) {
        pp.policy = i == 0 ? LLEP_POLICY_EP : o->params.policy;
        r = llep__plan_run(&other, l->v, &pp, NULL);
        if (r == 0)
            ns[i] = llep__plan_model_ns(&other, &o->model, layer, NULL);
    }
    llep__plan_fini(&other);
    if (r < 0)
        return r;
    static const char *const picks[] = { "EP", "LLA", "the refinement" };
    char what[160] = "nominal figures, not measurements";
    if (o->model_measured)
        snprintf(what, sizeof(what), "calibration of %s, backend %s", o->model.device_name,
                 o->model.backend);
    printf("cost planner: picked %s, modelled makespan %.1f us (EP %.1f us, LLA %.1f us)\n"
           "  under %s, D %u, H %u, bf16 (%s)\n",
           picks[plan->pick], plan->model_ns / 1e3, ns[0] / 1e3, ns[1] / 1e3, o->model_name,
           o->hidden, o->inter, what);
    return 0;
}

static int run(const options *o, const llep_loads *l) {
    llep_plan plan;
    char err[256];
    llep_cost_layer layer;
    llep_plan_params params = o->params;
    int r = llep__plan_init(&plan, (uint32_t)l->n, o->devices);

    if (r < 0) {
        fprintf(stderr, "%s: cannot set up a plan: %s\n", prog, strerror(-r));
        return 1;
    }
    llep__cost_layer(&layer, o->hidden, o->inter, 2, false);
    if (params.planner == LLEP_PLANNER_COST) {
        params.cost = &o->model;
        params.cost_layer = &layer;
    }
    r = llep__plan_run(&plan, l->v, &params, NULL);
    if (r == -EOVERFLOW) {
        usage_error("the loads add up to more than 2^64 - 1 token-slots");
        llep__plan_fini(&plan);
        return EXIT_USAGE;
    }
    if (r == 0)
        r = llep__plan_validate(&plan, err, sizeof(err));
    if (r < 0) {
        /* Parameters were checked above, so this is a bug in the planner: say so loudly. */
        fprintf(stderr, "%s: internal error: invalid plan: %s\n", prog, err);
        llep__plan_fini(&plan);
        return 1;
    }
    llep_plan_nodes nodes;
    if (o->params.devices_per_node) {
        r = node_figures(o, &plan, l, &nodes);
        if (r < 0) {
            fprintf(stderr, "%s: cannot count the traffic between nodes: %s\n", prog,
                    strerror(-r));
            llep__plan_fini(&plan);
            return 1;
        }
    }
    r = print_plan(o, &plan, o->params.devices_per_node ? &nodes : NULL);
    if (r == 0 && !o->json && params.planner == LLEP_PLANNER_COST)
        r = print_costs(o, &plan, l, &layer);
    llep__plan_fini(&plan);
    if (r < 0 || fflush(stdout) != 0) {
        fprintf(stderr, "%s: writing the plan failed\n", prog);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    options o;
    llep_loads loads = { 0 };
    int r = parse_args(argc, argv, &o);

    if (r != 0)
        return r > 0 ? 0 : EXIT_USAGE;
    if (read_loads(argc, argv, &o, &loads) < 0) {
        llep__loads_free(&loads);
        return EXIT_USAGE;
    }
    r = run(&o, &loads);
    llep__loads_free(&loads);
    return r;
}
