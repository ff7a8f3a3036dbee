/* llepd options and config file: every option, every bad value, file errors with lines. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "fixtures.h"
#include "llep/types.h"
#include "plan.h"

static char tmpdir[64];
static char err[512];

static void setup(void) {
    const char *base = getenv("TMPDIR");

    llep_test_tmpdir_in(tmpdir, sizeof(tmpdir), base && base[0] ? base : "/tmp", "test-config");
    /* Tests of the default socket path set what they need. */
    unsetenv("LLEP_SOCKET");
    err[0] = '\0';
}

static void teardown(void) {
    llep_test_rm_rf(tmpdir);
}

/* Writes a config file in the test's directory and returns its path (static buffer). */
static char *write_file(const char *name, const char *text, size_t len) {
    static char path[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

#define ARGV(...) ((char *const[]){ "llepd", __VA_ARGS__, NULL })
#define ARGC(...) ((int)(sizeof((const char *[]){ "llepd", __VA_ARGS__ }) / sizeof(char *)))
#define PARSE(c, ...) llep__config_parse_args((c), ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), err, \
                                              sizeof(err))

START_TEST(test_defaults) {
    llep_config c;

    llep__config_init(&c);
    ck_assert_ptr_null(c.socket_path);
    ck_assert_int_eq(c.backend, LLEP_BACKEND_AUTO);
    ck_assert_uint_eq(c.devices, 0);
    ck_assert_uint_eq(c.device_memory, 0);
    ck_assert(c.alpha == LLEP_DEFAULT_ALPHA);
    ck_assert(c.lambda == LLEP_DEFAULT_LAMBDA);
    ck_assert_uint_eq(c.min_tokens, LLEP_DEFAULT_MIN_TOKENS);
    ck_assert_int_eq(c.log_level, LLEP_LOG_NOTICE);

    setenv("LLEP_SOCKET", "/tmp/x.sock", 1);
    ck_assert_int_eq(llep__config_parse_args(&c, 1, (char *const[]){ "llepd", NULL }, err,
                                             sizeof(err)), 0);
    ck_assert_str_eq(c.socket_path, "/tmp/x.sock");
    ck_assert(!c.help && !c.version);
    llep__config_fini(&c);
    llep__config_fini(&c);  /* harmless twice */
}
END_TEST

START_TEST(test_every_option) {
    llep_config c;

    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--socket", "/run/x/s.sock", "--backend", "cpu", "--devices",
                           "8", "--device-memory", "16G", "--alpha", "1.5", "--lambda=2",
                           "--min-tokens", "512", "--log-level", "debug"), 0);
    ck_assert_str_eq(c.socket_path, "/run/x/s.sock");
    ck_assert_int_eq(c.backend, LLEP_BACKEND_CPU);
    ck_assert_uint_eq(c.devices, 8);
    ck_assert_uint_eq(c.device_memory, 16ull << 30);
    ck_assert(c.alpha == 1.5);
    ck_assert(c.lambda == 2.0);
    ck_assert_uint_eq(c.min_tokens, 512);
    ck_assert_int_eq(c.log_level, LLEP_LOG_DEBUG);

    /* --key=value, '_' for '-', later options win, auto resets. */
    ck_assert_int_eq(PARSE(&c, "--backend=cuda", "--devices=auto", "--device_memory=auto",
                           "--min_tokens=0", "--log-level=err", "--socket=a", "--socket=b"),
                     0);
    ck_assert_int_eq(c.backend, LLEP_BACKEND_CUDA);
    ck_assert_uint_eq(c.devices, 0);
    ck_assert_uint_eq(c.device_memory, 0);
    ck_assert_uint_eq(c.min_tokens, 0);
    ck_assert_int_eq(c.log_level, LLEP_LOG_ERR);
    ck_assert_str_eq(c.socket_path, "b");

    /* scale-min-tokens takes yes/no (true/false, 1/0); the default is the paper's rule. */
    ck_assert(!c.scale_min_tokens);
    ck_assert_int_eq(PARSE(&c, "--scale-min-tokens", "yes"), 0);
    ck_assert(c.scale_min_tokens);
    ck_assert_int_eq(PARSE(&c, "--scale-min-tokens=no"), 0);
    ck_assert(!c.scale_min_tokens);

    /* planner: cost by default (used where the devices have a cost model), or lla. */
    ck_assert_int_eq(c.planner, LLEP_PLANNER_COST);
    ck_assert_int_eq(PARSE(&c, "--planner", "lla"), 0);
    ck_assert_int_eq(c.planner, LLEP_PLANNER_LLA);
    ck_assert_int_eq(PARSE(&c, "--planner=cost"), 0);
    ck_assert_int_eq(c.planner, LLEP_PLANNER_COST);

    /* A device spec is kept as text for the backend to check; a count clears it. */
    ck_assert_int_eq(PARSE(&c, "--devices", "cuda:0x4,1x4"), 0);
    ck_assert_str_eq(c.devices_spec, "cuda:0x4,1x4");
    ck_assert_uint_eq(c.devices, 0);
    ck_assert_int_eq(PARSE(&c, "--devices", "cuda:0x4", "--devices", "3"), 0);
    ck_assert_str_eq(c.devices_spec, "");
    ck_assert_uint_eq(c.devices, 3);

    ck_assert_int_eq(PARSE(&c, "--backend", "auto", "--log-level", "warning"), 0);
    ck_assert_int_eq(c.backend, LLEP_BACKEND_AUTO);
    ck_assert_int_eq(c.log_level, LLEP_LOG_WARNING);
    ck_assert_int_eq(PARSE(&c, "--log-level", "notice"), 0);
    ck_assert_int_eq(c.log_level, LLEP_LOG_NOTICE);
    ck_assert_int_eq(PARSE(&c, "--log-level", "info", "--devices", "4096",
                           "--device-memory", "1"), 0);
    ck_assert_int_eq(c.log_level, LLEP_LOG_INFO);
    ck_assert_uint_eq(c.devices, 4096);
    ck_assert_uint_eq(c.device_memory, 1);
    /* A value may start with "--" when it is given separately. */
    ck_assert_int_eq(PARSE(&c, "--socket", "--weird"), 0);
    ck_assert_str_eq(c.socket_path, "--weird");
    llep__config_fini(&c);
}
END_TEST

/* replica-cache (issue 15, item 3): auto by default, off, 0 or a size; bad values refused. */
START_TEST(test_replica_cache) {
    llep_config c;

    llep__config_init(&c);
    ck_assert_uint_eq(c.replica_cache, LLEP_CONFIG_CACHE_AUTO);
    ck_assert_int_eq(PARSE(&c, "--replica-cache", "512M"), 0);
    ck_assert_uint_eq(c.replica_cache, 512ull << 20);
    ck_assert_int_eq(PARSE(&c, "--replica-cache=off"), 0);
    ck_assert_uint_eq(c.replica_cache, 0);
    ck_assert_int_eq(PARSE(&c, "--replica_cache", "auto"), 0);
    ck_assert_uint_eq(c.replica_cache, LLEP_CONFIG_CACHE_AUTO);
    ck_assert_int_eq(PARSE(&c, "--replica-cache", "0"), 0);
    ck_assert_uint_eq(c.replica_cache, 0);
    ck_assert_int_eq(llep__config_set(&c, "replica-cache", "1G", err, sizeof(err)), 0);
    ck_assert_uint_eq(c.replica_cache, 1ull << 30);
    static char *const bad[] = { "", "-1", "1.5G", "16Q", "on", "17179869184G" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ck_assert_msg(PARSE(&c, "--replica-cache", bad[i]) == -EINVAL, "%s", bad[i]);
        ck_assert_msg(strstr(err, "for option '--replica-cache': expected auto, off or a size"),
                      "%s", err);
    }
    ck_assert_uint_eq(c.replica_cache, 1ull << 30);
    llep__config_fini(&c);
}
END_TEST

/* state-dir: an absolute path or off; unset, $LLEP_STATE_DIR, else /var/lib/llep. */
START_TEST(test_state_dir) {
    llep_config c;

    unsetenv("LLEP_STATE_DIR");
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--alpha", "1"), 0);
    ck_assert_str_eq(c.state_dir, LLEP_STATE_DIR_DEFAULT);
    llep__config_fini(&c);
    setenv("LLEP_STATE_DIR", "/tmp/st", 1);
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--alpha", "1"), 0);
    ck_assert_str_eq(c.state_dir, "/tmp/st");
    llep__config_fini(&c);
    /* The option wins over the environment, off included. */
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--state-dir", "/srv/llep"), 0);
    ck_assert_str_eq(c.state_dir, "/srv/llep");
    ck_assert_int_eq(PARSE(&c, "--state_dir=off"), 0);
    ck_assert_str_eq(c.state_dir, "");
    llep__config_fini(&c);
    setenv("LLEP_STATE_DIR", "off", 1);
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--alpha", "1"), 0);
    ck_assert_str_eq(c.state_dir, "");
    llep__config_fini(&c);
    setenv("LLEP_STATE_DIR", "relative/dir", 1);
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--alpha", "1"), -EINVAL);
    ck_assert_msg(strstr(err, "$LLEP_STATE_DIR must be off or an absolute path"), "%s", err);
    llep__config_fini(&c);
    unsetenv("LLEP_STATE_DIR");
    static char *const bad[] = { "", "var/lib/llep", "./x", "on" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        llep__config_init(&c);
        ck_assert_msg(PARSE(&c, "--state-dir", bad[i]) == -EINVAL, "%s", bad[i]);
        ck_assert_msg(strstr(err, "expected an absolute path of 1 to 255 bytes, or off"), "%s",
                      err);
        llep__config_fini(&c);
    }
}
END_TEST

START_TEST(test_bad_values) {
    static char *const bad[][2] = {
        { "--socket", "" },
        { "--socket", "/a/very/long/path/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock" },
        { "--backend", "gpu" }, { "--backend", "CPU" }, { "--backend", "" },
        { "--devices", "0" }, { "--devices", "4097" }, { "--devices", "-1" },
        { "--devices", "8x" }, { "--devices", "1.5" }, { "--devices", "99999999999999999999" },
        { "--scale-min-tokens", "maybe" }, { "--scale-min-tokens", "" },
        { "--planner", "LLA" }, { "--planner", "" }, { "--planner", "ep" },
        { "--devices", "cuda:0;rm" }, { "--devices", "cuda:0 x4" }, { "--devices", "CUDA:0" },
        { "--device-memory", "0" }, { "--device-memory", "16Q" }, { "--device-memory", "-1G" },
        { "--device-memory", "17179869184G" }, { "--device-memory", "1.5G" },
        { "--alpha", "0" }, { "--alpha", "-1" }, { "--alpha", "nan" }, { "--alpha", "inf" },
        { "--alpha", "1e999" }, { "--alpha", "x" }, { "--alpha", "1.0 " },
        { "--lambda", "0" }, { "--lambda", "-0.5" }, { "--lambda", "NaN" },
        { "--lambda", "" },
        { "--min-tokens", "-1" }, { "--min-tokens", "4294967296" }, { "--min-tokens", "1k" },
        { "--log-level", "error" }, { "--log-level", "DEBUG" }, { "--log-level", "7" },
        { "--log-level", "warn" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        llep_config c;
        char expect[64];

        llep__config_init(&c);
        ck_assert_msg(PARSE(&c, bad[i][0], bad[i][1]) == -EINVAL, "%s %s", bad[i][0],
                      bad[i][1]);
        snprintf(expect, sizeof(expect), "for option '%s': expected ", bad[i][0]);
        ck_assert_msg(strstr(err, "bad value '") == err && strstr(err, expect), "%s", err);
        llep__config_fini(&c);
    }
}
END_TEST

START_TEST(test_error_messages) {
    llep_config c;

    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--alpha", "abc"), -EINVAL);
    ck_assert_str_eq(err, "bad value 'abc' for option '--alpha': expected a finite number > 0");
    ck_assert_int_eq(PARSE(&c, "--device-memory=16 G"), -EINVAL);
    ck_assert_str_eq(err, "bad value '16 G' for option '--device-memory': expected auto or a "
                          "size > 0 like 512M, 16G or 1T");
    ck_assert_int_eq(PARSE(&c, "--backend", "gpu\x1b[2J"), -EINVAL);
    ck_assert_str_eq(err, "bad value 'gpu\\x1b[2J' for option '--backend': expected cpu, cuda "
                          "or auto");
    ck_assert_int_eq(PARSE(&c, "--frobnicate", "1"), -ENOENT);
    ck_assert_str_eq(err, "unknown option '--frobnicate'");
    ck_assert_int_eq(PARSE(&c, "--alpha"), -EINVAL);
    ck_assert_str_eq(err, "option '--alpha' needs a value");
    ck_assert_int_eq(PARSE(&c, "foo"), -EINVAL);
    ck_assert_str_eq(err, "unexpected argument 'foo' (llepd takes only options)");
    ck_assert_int_eq(PARSE(&c, "-x"), -EINVAL);
    ck_assert_int_eq(PARSE(&c, "--"), -EINVAL);
    ck_assert_int_eq(PARSE(&c, "--help=yes"), -EINVAL);
    ck_assert_str_eq(err, "option '--help' takes no value");
    ck_assert_int_eq(PARSE(&c, "--config"), -EINVAL);
    ck_assert_int_eq(PARSE(&c, "--config="), -EINVAL);
    /* A failed option leaves the earlier value alone. */
    ck_assert_int_eq(PARSE(&c, "--alpha", "2", "--alpha", "-2"), -EINVAL);
    ck_assert(c.alpha == 2.0);
    llep__config_fini(&c);
}
END_TEST

START_TEST(test_help_version) {
    llep_config c;
    char *text = NULL;
    size_t len = 0;
    FILE *f;

    llep__config_init(&c);
    /* --help wins over anything else, even a config file that does not exist. */
    ck_assert_int_eq(PARSE(&c, "--config", "/nonexistent", "-h"), 0);
    ck_assert(c.help);
    ck_assert_ptr_null(c.socket_path);
    llep__config_fini(&c);
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--version"), 0);
    ck_assert(c.version && !c.help);
    ck_assert_int_eq(PARSE(&c, "--help"), 0);
    ck_assert(c.help);
    llep__config_fini(&c);

    f = open_memstream(&text, &len);
    llep__config_usage(f, "llepd");
    fclose(f);
    for (const char *const *o = (const char *const[]){ "--socket", "--backend", "--devices",
             "--device-memory", "--alpha", "--lambda", "--min-tokens", "--log-level",
             "--node-id", "--peers", "--listen-peers", "--peer-heartbeat-ms",
             "--peer-timeout-ms", "--cluster-communicator", "--model", "--config", "--help",
             "--version",
             NULL }; *o; o++)
        ck_assert_msg(strstr(text, *o), "%s missing from usage", *o);
    free(text);

    ck_assert_str_eq(llep__backend_name(LLEP_BACKEND_CUDA), "cuda");
    ck_assert_str_eq(llep__backend_name((enum llep_backend_kind)9), "unknown");
    ck_assert_str_eq(llep__log_level_name(LLEP_LOG_WARNING), "warning");
    ck_assert_str_eq(llep__log_level_name((enum llep_log_level)0), "unknown");
}
END_TEST

START_TEST(test_config_file) {
    static const char text[] =
        "# llepd configuration\n"
        "\n"
        "socket = /run/llep/test.sock\n"
        "   backend=cpu   \n"
        "\tdevices = 4\r\n"
        "device-memory = 512M\n"
        "  # indented comment\n"
        "alpha = 1.25\n"
        "lambda = 1.5\n"
        "min_tokens = 64\n"
        "log-level = info";   /* no final newline */
    llep_config c;
    char *path = write_file("llepd.conf", text, sizeof(text) - 1);

    llep__config_init(&c);
    ck_assert_int_eq(llep__config_load_file(&c, path, err, sizeof(err)), 0);
    ck_assert_str_eq(c.socket_path, "/run/llep/test.sock");
    ck_assert_int_eq(c.backend, LLEP_BACKEND_CPU);
    ck_assert_uint_eq(c.devices, 4);
    ck_assert_uint_eq(c.device_memory, 512ull << 20);
    ck_assert(c.alpha == 1.25);
    ck_assert(c.lambda == 1.5);
    ck_assert_uint_eq(c.min_tokens, 64);
    ck_assert_int_eq(c.log_level, LLEP_LOG_INFO);
    llep__config_fini(&c);

    /* The command line wins over the file, before or after --config. */
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--devices", "2", "--config", path, "--alpha=3"), 0);
    ck_assert_str_eq(c.config_file, path);
    ck_assert_uint_eq(c.devices, 2);
    ck_assert(c.alpha == 3.0);
    ck_assert(c.lambda == 1.5);
    ck_assert_str_eq(c.socket_path, "/run/llep/test.sock");
    llep__config_fini(&c);

    /* Empty and comment-only files are fine. */
    llep__config_init(&c);
    ck_assert_int_eq(llep__config_parse_text(&c, "x", "", 0, err, sizeof(err)), 0);
    ck_assert_int_eq(llep__config_parse_text(&c, "x", "#\n\n  \n", 6, err, sizeof(err)), 0);
    llep__config_fini(&c);
}
END_TEST

/* Each broken file fails with FILE:LINE naming the key. */
START_TEST(test_config_file_errors) {
    static const struct { const char *text; int r; const char *msg; } cases[] = {
        { "alpha = 1\n\nfrobnicate = 2\n", -ENOENT, "F:3: unknown key 'frobnicate'" },
        { "backend = cpu\nalpha = fast\n", -EINVAL,
          "F:2: bad value 'fast' for key 'alpha': expected a finite number > 0" },
        { "# c\nlambda = 1.3 # the default\n", -EINVAL,
          "F:2: bad value '1.3 # the default' for key 'lambda': expected a finite number > 0" },
        { "devices 8\n", -EINVAL, "F:1: expected 'key = value', got 'devices 8'" },
        { "\n\n = 8\n", -EINVAL, "F:3: missing key before '='" },
        { "devices =\n", -EINVAL, "F:1: missing value for key 'devices'" },
        { "devices = 0\n", -EINVAL,
          "F:1: bad value '0' for key 'devices': expected auto, an integer from 1 to 4096, or a spec like cuda:0x4" },
        { "config = /etc/other.conf\n", -EINVAL,
          "F:1: key 'config' cannot be used in a config file" },
        { "log-level = loud\n", -EINVAL,
          "F:1: bad value 'loud' for key 'log-level': expected err, warning, notice, info or "
          "debug" },
        { "device-memory = 1T\ndevice-memory = 99999999T\n", -EINVAL,
          "F:2: bad value '99999999T' for key 'device-memory': expected auto or a size > 0 "
          "like 512M, 16G or 1T" },
        { "min-tokens = 1\nmin-tokens = 2\nMIN-TOKENS = 3\n", -ENOENT,
          "F:3: unknown key 'MIN-TOKENS'" },
        { "a\xff\x01 = 1\n", -ENOENT, "F:1: unknown key 'a\\xff\\x01'" },
        { "--alpha = 1\n", -ENOENT, "F:1: unknown key '--alpha'" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        llep_config c;

        llep__config_init(&c);
        ck_assert_int_eq(llep__config_parse_text(&c, "F", cases[i].text, strlen(cases[i].text),
                                                 err, sizeof(err)), cases[i].r);
        ck_assert_str_eq(err, cases[i].msg);
        llep__config_fini(&c);
    }
}
END_TEST

START_TEST(test_config_file_io_errors) {
    static const char nul[] = "alpha = 1\nlambda = 1\0\n";
    llep_config c;
    char *path;
    char expect[256], *big;

    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--config", "/nonexistent/llepd.conf"), -ENOENT);
    ck_assert_str_eq(err, "/nonexistent/llepd.conf: cannot open: No such file or directory");
    ck_assert_int_eq(llep__config_load_file(&c, tmpdir, err, sizeof(err)), -EISDIR);
    ck_assert_ptr_nonnull(strstr(err, "cannot read"));

    path = write_file("nul.conf", nul, sizeof(nul) - 1);
    ck_assert_int_eq(llep__config_load_file(&c, path, err, sizeof(err)), -EINVAL);
    snprintf(expect, sizeof(expect), "%s:2: line contains a NUL byte", path);
    ck_assert_str_eq(err, expect);

    /* A file error through --config names the file and line too. */
    path = write_file("bad.conf", "alpha = 1\nbackend = tpu\n", 24);
    ck_assert_int_eq(PARSE(&c, "--config", path), -EINVAL);
    snprintf(expect, sizeof(expect),
             "%s:2: bad value 'tpu' for key 'backend': expected cpu, cuda or auto", path);
    ck_assert_str_eq(err, expect);
    ck_assert_int_eq(PARSE(&c, "--config", path, "--config", path), -EINVAL);
    ck_assert_str_eq(err, "option '--config' given more than once");

    big = malloc(LLEP_CONFIG_FILE_MAX + 1);
    memset(big, '\n', LLEP_CONFIG_FILE_MAX + 1);
    path = write_file("big.conf", big, LLEP_CONFIG_FILE_MAX);
    ck_assert_int_eq(llep__config_load_file(&c, path, err, sizeof(err)), 0);
    path = write_file("big.conf", big, LLEP_CONFIG_FILE_MAX + 1);
    ck_assert_int_eq(llep__config_load_file(&c, path, err, sizeof(err)), -EFBIG);
    free(big);

    if (geteuid() != 0) {
        path = write_file("secret.conf", "alpha = 1\n", 10);
        ck_assert_int_eq(chmod(path, 0), 0);
        ck_assert_int_eq(llep__config_load_file(&c, path, err, sizeof(err)), -EACCES);
    }
    llep__config_fini(&c);
}
END_TEST

START_TEST(test_config_set) {
    llep_config c;

    llep__config_init(&c);
    ck_assert_int_eq(llep__config_set(&c, "lambda", "2.5", err, sizeof(err)), 0);
    ck_assert(c.lambda == 2.5);
    ck_assert_int_eq(llep__config_set(&c, "min_tokens", "7", err, sizeof(err)), 0);
    ck_assert_uint_eq(c.min_tokens, 7);
    ck_assert_int_eq(llep__config_set(&c, "policy", "ep", err, sizeof(err)), -ENOENT);
    ck_assert_str_eq(err, "unknown key 'policy'");
    ck_assert_int_eq(llep__config_set(&c, "config", "x", err, sizeof(err)), -ENOENT);
    ck_assert_int_eq(llep__config_set(&c, "alpha", "0", err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "bad value '0' for key 'alpha': expected a finite number > 0");
    /* Long values are cut short in messages. */
    {
        char v[200];

        memset(v, '9', sizeof(v) - 1);
        v[sizeof(v) - 1] = '\0';
        ck_assert_int_eq(llep__config_set(&c, "devices", v, err, sizeof(err)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "9999...' for key 'devices'"));
    }
    /* A tiny error buffer is filled safely; none at all is fine. */
    {
        char tiny[4];

        ck_assert_int_eq(llep__config_set(&c, "alpha", "x", tiny, sizeof(tiny)), -EINVAL);
        ck_assert_str_eq(tiny, "bad");
        ck_assert_int_eq(llep__config_set(&c, "alpha", "x", NULL, 0), -EINVAL);
    }
    llep__config_fini(&c);
}
END_TEST

START_TEST(test_default_socket) {
    char *path = NULL;
    llep_config c;

    setenv("LLEP_SOCKET", "/srv/llep.sock", 1);
    ck_assert_int_eq(llep__socket_path_default(&path), 0);
    ck_assert_str_eq(path, "/srv/llep.sock");
    free(path);

    /* An empty $LLEP_SOCKET counts as unset. */
    setenv("LLEP_SOCKET", "", 1);
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    ck_assert_int_eq(llep__socket_path_default(&path), 0);
    ck_assert_str_eq(path, geteuid() == 0 ? "/run/llep/llepd.sock"
                                          : "/run/user/1000/llep/llepd.sock");
    free(path);

    if (geteuid() != 0) {
        unsetenv("XDG_RUNTIME_DIR");
        ck_assert_int_eq(llep__socket_path_default(&path), -ENXIO);
        setenv("XDG_RUNTIME_DIR", "relative/dir", 1);
        ck_assert_int_eq(llep__socket_path_default(&path), -ENXIO);
        llep__config_init(&c);
        ck_assert_int_eq(PARSE(&c, "--alpha", "1"), -ENXIO);
        ck_assert_str_eq(err, "no socket path: give --socket, or set $LLEP_SOCKET or "
                              "$XDG_RUNTIME_DIR");
        /* An explicit --socket needs no environment. */
        ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s"), 0);
        llep__config_fini(&c);
    }

    setenv("LLEP_SOCKET", "/a/very/long/path/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock", 1);
    ck_assert_int_eq(llep__socket_path_default(&path), -ENAMETOOLONG);
    llep__config_init(&c);
    ck_assert_int_eq(llep__config_finish(&c, err, sizeof(err)), -ENAMETOOLONG);
    ck_assert_ptr_nonnull(strstr(err, "give --socket"));
    llep__config_fini(&c);
}
END_TEST

/* Running as root (as in CI containers), the system path is the default. */
START_TEST(test_default_socket_root) {
    char *path = NULL;

    if (geteuid() != 0)
        return;
    unsetenv("XDG_RUNTIME_DIR");
    ck_assert_int_eq(llep__socket_path_default(&path), 0);
    ck_assert_str_eq(path, LLEP_SOCKET_SYSTEM);
    free(path);
}
END_TEST

START_TEST(test_settings) {
    llep_setting st;
    char buf[64];

    ck_assert_int_eq(llep__setting_parse("alpha", "1.5", &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st.key, LLEP_SETTING_ALPHA);
    ck_assert(st.value == 1.5);
    llep__setting_format(&st, buf, sizeof(buf));
    ck_assert_str_eq(buf, "1.5");
    ck_assert_int_eq(llep__setting_parse("lambda", "1.3", &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st.key, LLEP_SETTING_LAMBDA);
    llep__setting_format(&st, buf, sizeof(buf));
    ck_assert_str_eq(buf, "1.3");
    ck_assert_int_eq(llep__setting_parse("lambda", "0.1", &st, err, sizeof(err)), 0);
    st.value = 1.0 / 3.0;
    llep__setting_format(&st, buf, sizeof(buf));
    ck_assert(strtod(buf, NULL) == 1.0 / 3.0);
    ck_assert_int_eq(llep__setting_parse("min_tokens", "2048", &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st.key, LLEP_SETTING_MIN_TOKENS);
    ck_assert_uint_eq(st.min_tokens, 2048);
    llep__setting_format(&st, buf, sizeof(buf));
    ck_assert_str_eq(buf, "2048");
    ck_assert_int_eq(llep__setting_parse("min-tokens", "0", &st, err, sizeof(err)), 0);
    for (int p = LLEP_POLICY_AUTO; p <= LLEP_POLICY_LLEP; p++) {
        ck_assert_int_eq(llep__setting_parse("policy", llep__policy_name(p), &st, err,
                                             sizeof(err)), 0);
        ck_assert_int_eq(st.key, LLEP_SETTING_POLICY);
        ck_assert_int_eq(st.policy, p);
        llep__setting_format(&st, buf, sizeof(buf));
        ck_assert_str_eq(buf, llep__policy_name(p));
    }
    ck_assert_str_eq(llep__policy_name(LLEP_POLICY_LLEP), "llep");
    ck_assert_str_eq(llep__policy_name(7), "unknown");

    st.key = LLEP_SETTING_MIN_TOKENS;
    st.min_tokens = 5;
    ck_assert_int_eq(llep__setting_parse("policy", "LLEP", &st, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "bad value 'LLEP' for policy: expected auto, ep or llep");
    ck_assert_uint_eq(st.min_tokens, 5);   /* untouched on error */
    ck_assert_int_eq(llep__setting_parse("alpha", "0", &st, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "bad value '0' for alpha: expected a finite number > 0");
    ck_assert_int_eq(llep__setting_parse("lambda", "nan", &st, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__setting_parse("min_tokens", "-1", &st, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__setting_parse("min_tokens", "1e3", &st, err, sizeof(err)), -EINVAL);
    ck_assert_int_eq(llep__setting_parse("devices", "8", &st, err, sizeof(err)), -ENOENT);
    ck_assert_str_eq(err, "unknown setting 'devices': expected alpha, lambda, min_tokens, "
                          "policy, scale_min_tokens or planner");
    ck_assert_int_eq(llep__setting_parse("scale_min_tokens", "yes", &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st.key, LLEP_SETTING_SCALE_MIN_TOKENS);
    ck_assert(st.flag);
    llep__setting_format(&st, buf, sizeof(buf));
    ck_assert_str_eq(buf, "yes");
    ck_assert_int_eq(llep__setting_parse("scale-min-tokens", "no", &st, err, sizeof(err)), 0);
    ck_assert(!st.flag);
    ck_assert_int_eq(llep__setting_parse("scale_min_tokens", "on", &st, err, sizeof(err)),
                     -EINVAL);
    ck_assert_str_eq(err, "bad value 'on' for scale_min_tokens: expected yes or no");
    ck_assert_int_eq(llep__setting_parse("planner", "lla", &st, err, sizeof(err)), 0);
    ck_assert_int_eq(st.key, LLEP_SETTING_PLANNER);
    ck_assert_int_eq(st.planner, LLEP_PLANNER_LLA);
    llep__setting_format(&st, buf, sizeof(buf));
    ck_assert_str_eq(buf, "lla");
    ck_assert_int_eq(llep__setting_parse("planner", "cost", &st, err, sizeof(err)), 0);
    llep__setting_format(&st, buf, sizeof(buf));
    ck_assert_str_eq(buf, "cost");
    ck_assert_int_eq(llep__setting_parse("planner", "fast", &st, err, sizeof(err)), -EINVAL);
    ck_assert_str_eq(err, "bad value 'fast' for planner: expected cost or lla");
    ck_assert_str_eq(llep__planner_name(LLEP_PLANNER_COST), "cost");
    ck_assert_str_eq(llep__planner_name(9), "unknown");
}
END_TEST

/* Cluster membership: node-id, peers (sorted, canonical addresses), listen-peers, the
 * heartbeat and timeout, and the options that only go together. */
START_TEST(test_cluster_options) {
    llep_config c;
    char addr[64];

    llep__config_init(&c);
    ck_assert(!c.have_node_id && c.npeers == 0);
    ck_assert_uint_eq(c.peer_heartbeat_ms, 1000);
    ck_assert_uint_eq(c.peer_timeout_ms, 5000);
    ck_assert_ptr_null(llep__config_listen_addr(&c));
    ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s", "--node-id", "1", "--peers",
                           "2=127.0.0.3:7002,0=127.0.0.1:7000,1=[::1]:7001",
                           "--peer-heartbeat-ms", "50", "--peer-timeout-ms", "200"), 0);
    ck_assert(c.have_node_id);
    ck_assert_uint_eq(c.node_id, 1);
    ck_assert_uint_eq(c.npeers, 3);
    for (uint32_t i = 0; i < 3; i++)
        ck_assert_uint_eq(c.peers[i].id, i);
    ck_assert_str_eq(c.peers[0].host, "127.0.0.1");
    ck_assert_uint_eq(c.peers[0].port, 7000);
    ck_assert(c.peers[1].ipv6 && !c.peers[0].ipv6);
    ck_assert_uint_eq(c.peer_heartbeat_ms, 50);
    ck_assert_uint_eq(c.peer_timeout_ms, 200);
    /* This node listens on its own entry unless listen-peers says otherwise. */
    llep__peer_addr_format(llep__config_listen_addr(&c), addr, sizeof(addr));
    ck_assert_str_eq(addr, "[::1]:7001");
    uint64_t h = llep__peers_hash(&c);
    llep__config_fini(&c);

    /* Order and spelling of the list do not change the hash; a different list does. */
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s", "--node-id", "5", "--peers",
                           "0=127.0.0.1:7000,1=[0:0::1]:7001,2=127.0.0.3:7002",
                           "--listen-peers", "0.0.0.0:7100"), 0);
    ck_assert_uint_eq(llep__peers_hash(&c), h);
    llep__peer_addr_format(llep__config_listen_addr(&c), addr, sizeof(addr));
    ck_assert_str_eq(addr, "0.0.0.0:7100");
    ck_assert_int_eq(PARSE(&c, "--peers", "0=127.0.0.1:7000,1=[::1]:7001,2=127.0.0.3:7003",
                           "--node-id", "0"), 0);
    ck_assert_uint_ne(llep__peers_hash(&c), h);
    llep__config_fini(&c);

    /* The same keys in a config file. */
    static const char text[] = "node_id = 2\npeers = 0=10.0.0.1:7000,2=10.0.0.2:7000\n"
                               "peer-timeout-ms = 3000\n";
    llep__config_init(&c);
    ck_assert_int_eq(llep__config_parse_text(&c, "F", text, sizeof(text) - 1, err,
                                             sizeof(err)), 0);
    ck_assert_uint_eq(c.node_id, 2);
    ck_assert_uint_eq(c.npeers, 2);
    ck_assert_str_eq(c.peers[1].host, "10.0.0.2");
    ck_assert_uint_eq(c.peer_timeout_ms, 3000);
    llep__config_fini(&c);

    /* Whether cluster layers may use the backend's communicator between nodes. */
    llep__config_init(&c);
    ck_assert(!c.cluster_communicator_off);
    ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s", "--cluster-communicator", "off"), 0);
    ck_assert(c.cluster_communicator_off);
    ck_assert_int_eq(llep__config_set(&c, "cluster_communicator", "auto", err, sizeof(err)), 0);
    ck_assert(!c.cluster_communicator_off);
    ck_assert_int_eq(llep__config_set(&c, "cluster-communicator", "nccl", err, sizeof(err)),
                     -EINVAL);
    ck_assert_str_eq(err, "bad value 'nccl' for key 'cluster-communicator': expected auto or "
                          "off");
    llep__config_fini(&c);
}
END_TEST

/* The model key: NAME=DIR, repeated, the file's and the command line's together. */
START_TEST(test_models) {
    static const char text[] = "model = mix=/srv/models/mixtral\nmodel=oss=/srv/gpt oss\n";
    static const struct { char *value; const char *msg; } bad[] = {
        { "nameonly", "bad value 'nameonly' for option '--model': expected NAME=DIR: a model "
          "name (printable ASCII, no blanks or '/', at most 64 bytes) and its checkpoint "
          "directory" },
        { "=/srv/x", NULL },
        { "a/b=/srv/x", NULL },
        { "a b=/srv/x", NULL },
        { "a=relative/dir", "bad value 'a=relative/dir' for option '--model': expected "
          "NAME=DIR: a model name (printable ASCII, no blanks or '/', at most 64 bytes) and its "
          "checkpoint directory: the directory must be an absolute path of at most 1023 bytes" },
        { "a=", NULL },
        { "mix=/again", "bad value 'mix=/again' for option '--model': expected NAME=DIR: a "
          "model name (printable ASCII, no blanks or '/', at most 64 bytes) and its checkpoint "
          "directory: model 'mix' is given twice" },
        { "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=/srv/x", NULL },
    };
    llep_config c;
    char *path = write_file("models.conf", text, sizeof(text) - 1);

    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s", "--config", path, "--model", "q=/q"), 0);
    ck_assert_uint_eq(c.nmodels, 3);
    ck_assert_str_eq(c.models[0].name, "mix");
    ck_assert_str_eq(c.models[0].path, "/srv/models/mixtral");
    ck_assert_str_eq(c.models[1].name, "oss");
    ck_assert_str_eq(c.models[1].path, "/srv/gpt oss");
    ck_assert_str_eq(c.models[2].name, "q");
    llep__config_fini(&c);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        llep__config_init(&c);
        int r = PARSE(&c, "--socket", "/tmp/s", "--model", "mix=/m", "--model", bad[i].value);
        ck_assert_msg(r == -EINVAL, "%s accepted", bad[i].value);
        if (bad[i].msg)
            ck_assert_str_eq(err, bad[i].msg);
        ck_assert_uint_eq(c.nmodels, 1);   /* a bad value changes nothing */
        llep__config_fini(&c);
    }
    llep__config_init(&c);
    for (unsigned i = 0; i < LLEP_CONFIG_MAX_MODELS; i++) {
        char v[32];
        snprintf(v, sizeof(v), "m%u=/m", i);
        ck_assert_int_eq(llep__config_set(&c, "model", v, err, sizeof(err)), 0);
    }
    ck_assert_int_eq(llep__config_set(&c, "model", "one-more=/m", err, sizeof(err)), -EINVAL);
    ck_assert_msg(strstr(err, "at most 32 models"), "%s", err);
    llep__config_fini(&c);
}
END_TEST

START_TEST(test_cluster_errors) {
    static const struct { char *opt, *value; const char *msg; } bad[] = {
        { "--node-id", "65536", "bad value '65536' for option '--node-id': expected an "
          "integer from 0 to 65535" },
        { "--node-id", "-1", NULL },
        { "--peers", "", "bad value '' for option '--peers': expected ID=HOST:PORT,... with "
          "numeric addresses: node 1: expected ID=HOST:PORT" },
        { "--peers", "0=127.0.0.1:7000,", "bad value '0=127.0.0.1:7000,' for option "
          "'--peers': expected ID=HOST:PORT,... with numeric addresses: node 2: expected "
          "ID=HOST:PORT" },
        { "--peers", "x=127.0.0.1:7000", "bad value 'x=127.0.0.1:7000' for option '--peers': "
          "expected ID=HOST:PORT,... with numeric addresses: node 1: ID 'x' is not an integer "
          "from 0 to 65535" },
        { "--peers", "0=localhost:7000", "bad value '0=localhost:7000' for option '--peers': "
          "expected ID=HOST:PORT,... with numeric addresses: node 0: 'localhost' is not a "
          "numeric IPv4 address" },
        { "--peers", "0=127.0.0.1:70000", "bad value '0=127.0.0.1:70000' for option "
          "'--peers': expected ID=HOST:PORT,... with numeric addresses: node 0: port '70000' "
          "is not an integer from 1 to 65535" },
        { "--peers", "0=127.0.0.1", NULL },
        { "--peers", "0=127.0.0.1:", NULL },
        { "--peers", "0=127.0.0.1:0", NULL },
        { "--peers", "0=127.0.0.1:+80", NULL },
        { "--peers", "0=::1:7000", NULL },
        { "--peers", "0=[::1]7000", NULL },
        { "--peers", "0=[]:7000", NULL },
        { "--peers", "0=[127.0.0.1]:7000", NULL },
        { "--peers", "=127.0.0.1:7000", NULL },
        { "--peers", "0=127.0.0.1:7000,,1=127.0.0.1:7001", NULL },
        { "--peers", "0=127.0.0.1:7000 ,1=127.0.0.1:7001", NULL },
        { "--peers", "1=127.0.0.1:7000,1=127.0.0.2:7000", "bad value "
          "'1=127.0.0.1:7000,1=127.0.0.2:7000' for option '--peers': expected ID=HOST:PORT,"
          "... with numeric addresses: node id 1 appears twice" },
        { "--peers", "1=127.0.0.1:7000,2=127.0.0.1:7000", "bad value "
          "'1=127.0.0.1:7000,2=127.0.0.1:7000' for option '--peers': expected ID=HOST:PORT,"
          "... with numeric addresses: nodes 1 and 2 have the same address" },
        { "--listen-peers", "127.0.0.1", NULL },
        { "--listen-peers", "host:80", NULL },
        { "--peer-heartbeat-ms", "9", NULL },
        { "--peer-heartbeat-ms", "1s", NULL },
        { "--peer-timeout-ms", "0", NULL },
        { "--peer-timeout-ms", "3600001", NULL },
    };
    llep_config c;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char expect[64];

        llep__config_init(&c);
        ck_assert_msg(PARSE(&c, bad[i].opt, bad[i].value) == -EINVAL, "%s %s", bad[i].opt,
                      bad[i].value);
        snprintf(expect, sizeof(expect), "for option '%s': expected ", bad[i].opt);
        ck_assert_msg(strstr(err, "bad value '") == err && strstr(err, expect), "%s", err);
        if (bad[i].msg)
            ck_assert_str_eq(err, bad[i].msg);
        ck_assert(!c.have_node_id && c.npeers == 0 && !c.have_listen_peers);
        llep__config_fini(&c);
    }

    /* Too many nodes. */
    char *many = malloc(65 * 24);
    size_t len = 0;
    ck_assert_ptr_nonnull(many);
    for (int i = 0; i < 65; i++)
        len += (size_t)sprintf(many + len, "%s%d=127.0.0.1:%d", i ? "," : "", i, 7000 + i);
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--peers", many), -EINVAL);
    ck_assert_msg(strstr(err, ": more than 64 nodes"), "%s", err);
    llep__config_fini(&c);
    free(many);

    /* Options that only make sense together. */
    static const struct { char *a, *b, *c, *d; const char *msg; } pairs[] = {
        { "--node-id", "0", "--socket", "/tmp/s",
          "'node-id' needs 'peers', the list of the cluster's nodes" },
        { "--peers", "0=127.0.0.1:7000", "--socket", "/tmp/s",
          "'peers' needs 'node-id': which of the nodes is this one?" },
        { "--node-id", "3", "--peers", "0=127.0.0.1:7000,1=127.0.0.1:7001",
          "'peers' has no entry for this node (node-id 3): add 3=HOST:PORT or give "
          "'listen-peers'" },
        { "--listen-peers", "0.0.0.0:7000", "--socket", "/tmp/s",
          "'listen-peers' needs 'node-id' and 'peers'" },
        { "--peer-heartbeat-ms", "500", "--peer-timeout-ms", "500",
          "'peer-timeout-ms' (500) must be larger than 'peer-heartbeat-ms' (500)" },
        { "--peer-secret-file", "/etc/llep/peer-secret", "--socket", "/tmp/s",
          "'peer-secret-file' needs 'node-id' and 'peers'" },
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        llep__config_init(&c);
        ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s", pairs[i].a, pairs[i].b, pairs[i].c,
                               pairs[i].d), -EINVAL);
        ck_assert_str_eq(err, pairs[i].msg);
        llep__config_fini(&c);
    }

    /* In a file: FILE:LINE and the key. */
    llep__config_init(&c);
    const char *dup = "\npeers = 0=1.2.3.4:5,0=1.2.3.5:5\n";
    ck_assert_int_eq(llep__config_parse_text(&c, "F", dup, strlen(dup), err, sizeof(err)),
                     -EINVAL);
    ck_assert_str_eq(err, "F:2: bad value '0=1.2.3.4:5,0=1.2.3.5:5' for key 'peers': expected "
                          "ID=HOST:PORT,... with numeric addresses: node id 0 appears twice");
    llep__config_fini(&c);
}
END_TEST

/* The metrics endpoint: off by default, a numeric HOST:PORT like the peer addresses, and
 * the per-expert series behind their own key. */
START_TEST(test_metrics_options) {
    llep_config c;

    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s"), 0);
    ck_assert(!c.have_metrics_listen && !c.metrics_expert_loads);
    llep__config_fini(&c);

    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s", "--metrics-listen", "127.0.0.1:9464",
                           "--metrics-expert-loads", "yes"), 0);
    ck_assert(c.have_metrics_listen && !c.metrics_listen.ipv6 && c.metrics_expert_loads);
    ck_assert_str_eq(c.metrics_listen.host, "127.0.0.1");
    ck_assert_uint_eq(c.metrics_listen.port, 9464);
    llep__config_fini(&c);

    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--socket", "/tmp/s", "--metrics-listen", "[::1]:9464"), 0);
    ck_assert(c.have_metrics_listen && c.metrics_listen.ipv6);
    ck_assert_str_eq(c.metrics_listen.host, "::1");
    llep__config_fini(&c);

    static char *const bad[] = { "localhost:9464", "127.0.0.1", "127.0.0.1:0",
                                       "127.0.0.1:65536", "::1:9464", "" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        llep__config_init(&c);
        ck_assert_msg(PARSE(&c, "--metrics-listen", bad[i]) == -EINVAL, "%s", bad[i]);
        ck_assert_msg(strstr(err, "for option '--metrics-listen': expected HOST:PORT"), "%s",
                      err);
        ck_assert(!c.have_metrics_listen);
        llep__config_fini(&c);
    }
    llep__config_init(&c);
    ck_assert_int_eq(PARSE(&c, "--metrics-expert-loads", "maybe"), -EINVAL);
    llep__config_fini(&c);
    /* keep-host-weights (failed devices): off unless asked. */
    llep__config_init(&c);
    ck_assert(!c.keep_host_weights);
    ck_assert_int_eq(PARSE(&c, "--keep-host-weights", "yes"), 0);
    ck_assert(c.keep_host_weights);
    ck_assert_int_eq(PARSE(&c, "--keep-host-weights", "maybe"), -EINVAL);
    llep__config_fini(&c);
    /* calibrate-shapes (a cost model per layer shape): on unless turned off. */
    llep__config_init(&c);
    ck_assert(c.calibrate_shapes);
    ck_assert_int_eq(PARSE(&c, "--calibrate-shapes", "no"), 0);
    ck_assert(!c.calibrate_shapes);
    ck_assert_int_eq(PARSE(&c, "--calibrate-shapes", "yes"), 0);
    ck_assert(c.calibrate_shapes);
    ck_assert_int_eq(PARSE(&c, "--calibrate-shapes", "sometimes"), -EINVAL);
    llep__config_fini(&c);
}
END_TEST

static Suite *config_suite(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_every_option);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_replica_cache);
    tcase_add_test(tc, test_state_dir);
    tcase_add_test(tc, test_error_messages);
    tcase_add_test(tc, test_help_version);
    tcase_add_test(tc, test_config_file);
    tcase_add_test(tc, test_config_file_errors);
    tcase_add_test(tc, test_config_file_io_errors);
    tcase_add_test(tc, test_config_set);
    tcase_add_test(tc, test_default_socket);
    tcase_add_test(tc, test_default_socket_root);
    tcase_add_test(tc, test_settings);
    tcase_add_test(tc, test_cluster_options);
    tcase_add_test(tc, test_cluster_errors);
    tcase_add_test(tc, test_models);
    tcase_add_test(tc, test_metrics_options);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(config_suite(), CK_ENV);
}
