/* Tests of the backend and device choice (daemon/backends/backend-select.c): device spec parsing
 * and mapping, the decision for a given GPU count, and the real probe on this machine (no GPU:
 * --backend cuda fails clearly, auto falls back to the CPU and says so). Built in every build; the
 * CUDA build also checks that the CUDA backend itself refuses to start here. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend-cuda.h"
#include "backend-select.h"
#include "engine.h"
#include "fixtures.h"
#include "llep-config.h"

static int visible_here(void) {
#if LLEP_HAVE_CUDA
    return llep__cuda_visible_gpus(NULL, 0);
#else
    return -1;
#endif
}

START_TEST(parse_good_specs) {
    llep_device_spec s;
    char msg[200];

    ck_assert_int_eq(llep__device_spec_parse(NULL, &s, msg, sizeof(msg)), 0);
    ck_assert_int_eq(s.kind, LLEP_BACKEND_AUTO);
    ck_assert_uint_eq(s.count, 0);
    ck_assert_int_eq(llep__device_spec_parse("", &s, msg, sizeof(msg)), 0);
    ck_assert_int_eq(s.kind, LLEP_BACKEND_AUTO);
    ck_assert_int_eq(llep__device_spec_parse("8", &s, msg, sizeof(msg)), 0);
    ck_assert_uint_eq(s.count, 8);
    ck_assert_int_eq(llep__device_spec_parse("cpu:3", &s, msg, sizeof(msg)), 0);
    ck_assert_int_eq(s.kind, LLEP_BACKEND_CPU);
    ck_assert_uint_eq(s.count, 3);
    ck_assert_int_eq(llep__device_spec_parse("cuda", &s, msg, sizeof(msg)), 0);
    ck_assert_int_eq(s.kind, LLEP_BACKEND_CUDA);
    ck_assert_uint_eq(s.num_items, 0);
    ck_assert_int_eq(llep__device_spec_parse("cuda:all", &s, msg, sizeof(msg)), 0);
    ck_assert_uint_eq(s.num_items, 0);
    ck_assert_int_eq(llep__device_spec_parse("cuda:0,1,3", &s, msg, sizeof(msg)), 0);
    ck_assert_uint_eq(s.num_items, 3);
    ck_assert_uint_eq(s.gpu[2], 3);
    ck_assert_uint_eq(s.per_gpu[2], 1);
    ck_assert_int_eq(llep__device_spec_parse("cuda:0x4", &s, msg, sizeof(msg)), 0);
    ck_assert_uint_eq(s.num_items, 1);
    ck_assert_uint_eq(s.gpu[0], 0);
    ck_assert_uint_eq(s.per_gpu[0], 4);
    ck_assert_int_eq(llep__device_spec_parse("cuda:1x2,0x3", &s, msg, sizeof(msg)), 0);
    ck_assert_uint_eq(s.num_items, 2);
    ck_assert_uint_eq(s.gpu[0], 1);
    ck_assert_uint_eq(s.per_gpu[1], 3);
}
END_TEST

START_TEST(parse_bad_specs) {
    static const char *const bad[] = {
        "0", "-1", "x", "8x", "cpu:", "cpu:0", "cpu:x", "cuda:", "cuda:a", "cuda:0,",
        "cuda:0,,1", "cuda:0x0", "cuda:0x", "cuda:x4", "cuda:0,0", "cuda:64", "cuda:0x4097",
        "gpu:0", "cuda0", "99999999999", "cuda:0x2000,1x2097",
    };
    llep_device_spec s;
    char msg[200];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        msg[0] = '\0';
        ck_assert_msg(llep__device_spec_parse(bad[i], &s, msg, sizeof(msg)) == -EINVAL,
                      "'%s' was accepted", bad[i]);
        ck_assert_msg(strstr(msg, bad[i]) != NULL || strstr(msg, "devices") != NULL,
                      "'%s': message '%s' does not say which spec", bad[i], msg);
    }
}
END_TEST

static int map(const char *spec, uint32_t visible, uint32_t need, uint32_t *gpu_of,
               uint32_t *n) {
    llep_device_spec s;
    char msg[200];

    ck_assert_int_eq(llep__device_spec_parse(spec, &s, msg, sizeof(msg)), 0);
    return llep__device_spec_map(&s, visible, need, gpu_of, 64, n, msg, sizeof(msg));
}

START_TEST(map_specs_to_gpus) {
    uint32_t g[64], n;

    ck_assert_int_eq(map("cuda:0x4", 1, 0, g, &n), 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_uint_eq(g[0] + g[1] + g[2] + g[3], 0);
    ck_assert_int_eq(map("cuda:0x4", 1, 4, g, &n), 0);
    ck_assert_int_eq(map("cuda:0x4", 1, 8, g, &n), -EINVAL);
    ck_assert_int_eq(map("cuda:0,1", 1, 0, g, &n), -EINVAL);
    ck_assert_int_eq(map("cuda:1x2,0x1", 2, 0, g, &n), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(g[0], 1);
    ck_assert_uint_eq(g[1], 1);
    ck_assert_uint_eq(g[2], 0);
    ck_assert_int_eq(map("cuda", 8, 0, g, &n), 0);
    ck_assert_uint_eq(n, 8);
    ck_assert_uint_eq(g[7], 7);
    ck_assert_int_eq(map("8", 2, 0, g, &n), 0);
    ck_assert_uint_eq(n, 8);
    ck_assert_uint_eq(g[3], 0);
    ck_assert_uint_eq(g[4], 1);
    ck_assert_int_eq(map("3", 2, 0, g, &n), -EINVAL);
    ck_assert_int_eq(map("2", 8, 0, g, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(g[1], 1);
    /* No spec: the caller's P, spread over the GPUs. */
    ck_assert_int_eq(map(NULL, 1, 8, g, &n), 0);
    ck_assert_uint_eq(n, 8);
    ck_assert_uint_eq(g[7], 0);
    ck_assert_int_eq(map(NULL, 8, 4, g, &n), 0);
    ck_assert_uint_eq(g[3], 3);
    ck_assert_int_eq(map(NULL, 3, 4, g, &n), -EINVAL);
    ck_assert_int_eq(map("cuda", 0, 0, g, &n), -EINVAL);
}
END_TEST

START_TEST(decide_without_gpu) {
    const llep_backend_ops *ops = NULL;
    llep_backend_options o;
    char msg[300];

    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_CUDA, NULL, -1, "CUDA: no driver",
                                              &ops, &o, msg, sizeof(msg)), -ENODEV);
    ck_assert_ptr_nonnull(strstr(msg, "--backend cuda"));
    ck_assert_ptr_nonnull(strstr(msg, "CUDA: no driver"));
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_AUTO, NULL, -1, "CUDA: no driver",
                                              &ops, &o, msg, sizeof(msg)), 0);
    ck_assert_ptr_eq(ops, &llep__backend_cpu);
    ck_assert_uint_eq(o.num_devices, 0);
    ck_assert_ptr_nonnull(strstr(msg, "using the CPU backend"));
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_AUTO, "6", 0, "none", &ops, &o, msg,
                                              sizeof(msg)), 0);
    ck_assert_ptr_eq(ops, &llep__backend_cpu);
    ck_assert_uint_eq(o.num_devices, 6);
    /* An explicit GPU spec with no GPU is an error even under auto. */
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_AUTO, "cuda:0x4", -1, "none", &ops,
                                              &o, msg, sizeof(msg)), -ENODEV);
    ck_assert_ptr_nonnull(strstr(msg, "cuda:0x4"));
}
END_TEST

START_TEST(decide_specs_for_other_backend) {
    const llep_backend_ops *ops = NULL;
    llep_backend_options o;
    char msg[300];

    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_CPU, "cuda:0x4", 2, NULL, &ops, &o,
                                              msg, sizeof(msg)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "--backend cuda"));
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_CUDA, "cpu:4", 2, NULL, &ops, &o,
                                              msg, sizeof(msg)), -EINVAL);
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_CPU, "cpu:4", 2, NULL, &ops, &o,
                                              msg, sizeof(msg)), 0);
    ck_assert_ptr_eq(ops, &llep__backend_cpu);
    ck_assert_uint_eq(o.num_devices, 4);
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_AUTO, "cpu:4", 2, NULL, &ops, &o,
                                              msg, sizeof(msg)), 0);
    ck_assert_ptr_eq(ops, &llep__backend_cpu);
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_AUTO, "bogus", 2, NULL, &ops, &o,
                                              msg, sizeof(msg)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "bogus"));
}
END_TEST

/* With GPUs visible, the CUDA build picks the CUDA backend; a build without CUDA cannot. */
START_TEST(decide_with_gpus) {
    const llep_backend_ops *ops = NULL;
    llep_backend_options o;
    char msg[300];

    int r = llep__backend_select_for(LLEP_BACKEND_AUTO, "cuda:0x4", 2, NULL, &ops, &o, msg,
                                     sizeof(msg));
#if LLEP_HAVE_CUDA
    ck_assert_int_eq(r, 0);
    ck_assert_ptr_eq(ops, &llep__backend_cuda);
    ck_assert_uint_eq(o.num_devices, 4);
    ck_assert_str_eq(o.devices, "cuda:0x4");
    ck_assert_ptr_nonnull(strstr(msg, "cuda"));
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_CUDA, NULL, 2, NULL, &ops, &o, msg,
                                              sizeof(msg)), 0);
    ck_assert_uint_eq(o.num_devices, 2);
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_CUDA, "cuda:2", 2, NULL, &ops, &o,
                                              msg, sizeof(msg)), -EINVAL);
    ck_assert_ptr_nonnull(strstr(msg, "GPU 2"));
#else
    ck_assert_int_eq(r, -ENODEV);
    ck_assert_ptr_nonnull(strstr(msg, "without CUDA"));
    ck_assert_int_eq(llep__backend_select_for(LLEP_BACKEND_AUTO, NULL, 2, NULL, &ops, &o, msg,
                                              sizeof(msg)), 0);
    ck_assert_ptr_eq(ops, &llep__backend_cpu);
    ck_assert_ptr_nonnull(strstr(msg, "without CUDA"));
#endif
}
END_TEST

/* The real probe of this machine. */
START_TEST(select_on_this_machine) {
    const llep_backend_ops *ops = NULL;
    llep_backend_options o;
    char msg[300];
    int visible = visible_here();

    int r = llep__backend_select(LLEP_BACKEND_CUDA, NULL, &ops, &o, msg, sizeof(msg));
    if (visible > 0) {
        ck_assert_int_eq(r, 0);
        ck_assert_uint_eq(o.num_devices, (uint32_t)visible);
        ck_assert_uint_gt(o.mem_per_device, 0);
        return;
    }
    ck_assert_int_eq(r, -ENODEV);
    ck_assert_ptr_nonnull(strstr(msg, "no usable GPU"));
    ck_assert_int_eq(llep__backend_select(LLEP_BACKEND_AUTO, NULL, &ops, &o, msg, sizeof(msg)),
                     0);
    ck_assert_ptr_eq(ops, &llep__backend_cpu);
    ck_assert_ptr_nonnull(strstr(msg, "backend auto: no usable GPU"));
    ck_assert_ptr_nonnull(strstr(msg, "using the CPU backend"));
}
END_TEST

#if LLEP_HAVE_CUDA
/* Without a GPU the CUDA backend refuses to start, and the engine says which backend. */
START_TEST(cuda_backend_needs_a_gpu) {
    float w[4 * 2 * 2] = { 0 };
    llep_engine_config cfg;
    llep_engine *e = NULL;
    char err[200] = "";

    if (visible_here() > 0)
        return;
    llep__engine_config_default(&cfg);
    cfg.num_experts = 4;
    cfg.top_k = 1;
    cfg.hidden = cfg.inter = 2;
    cfg.num_devices = 2;
    cfg.w_gate = cfg.w_up = cfg.w_down = w;
    cfg.backend = &llep__backend_cuda;
    cfg.backend_devices = "cuda:0x2";
    ck_assert_int_eq(llep__engine_new(&cfg, &e, err, sizeof(err)), -ENODEV);
    ck_assert_ptr_null(e);
    ck_assert_ptr_nonnull(strstr(err, "cuda backend"));
}
END_TEST
#endif

static Suite *select_suite(void) {
    Suite *s = suite_create("backend-select");
    TCase *tc = tcase_create("select");

    tcase_add_test(tc, parse_good_specs);
    tcase_add_test(tc, parse_bad_specs);
    tcase_add_test(tc, map_specs_to_gpus);
    tcase_add_test(tc, decide_without_gpu);
    tcase_add_test(tc, decide_specs_for_other_backend);
    tcase_add_test(tc, decide_with_gpus);
    tcase_add_test(tc, select_on_this_machine);
#if LLEP_HAVE_CUDA
    tcase_add_test(tc, cuda_backend_needs_a_gpu);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return llep_test_run_suite(select_suite(), CK_NORMAL);
}
