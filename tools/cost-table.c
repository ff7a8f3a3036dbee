/* A calibration as a table and as JSON (cost-table.h). */
#include "cost-table.h"

#include <inttypes.h>
#include <math.h>

#include "json-out.h"

static const char *const link_names[LLEP_LINK_KINDS] = { "same", "gpu", "peer", "node" };

/* What each kind of link is, in words for the table. */
static const char *const link_words[LLEP_LINK_KINDS] = {
    "same device", "same physical device", "between physical devices", "between nodes",
};

const char *llep__cost_link_name(int kind) {
    return kind >= 0 && kind < LLEP_LINK_KINDS ? link_names[kind] : "?";
}

static double top_rate(const llep_cost_model *m) {
    double top = 0;

    for (uint32_t i = 0; i < m->num_points && i < LLEP_COST_MAX_POINTS; i++)
        top = fmax(top, m->rate[i]);
    return top;
}

/* 1234 ns -> "1.23 us". */
static const char *fmt_ns(double ns, char *buf, size_t len) {
    if (ns < 1e3)
        snprintf(buf, len, "%.0f ns", ns);
    else if (ns < 1e6)
        snprintf(buf, len, "%.2f us", ns / 1e3);
    else if (ns < 1e9)
        snprintf(buf, len, "%.2f ms", ns / 1e6);
    else
        snprintf(buf, len, "%.2f s", ns / 1e9);
    return buf;
}

void llep__cost_table_print(FILE *f, const llep_calibration *cal) {
    const llep_cost_model *m = &cal->model;
    double top = top_rate(m);
    char b1[32], b2[32];

    fprintf(f, "calibration: backend %s, %s, %u device%s\n", m->backend, m->device_name,
            cal->devices, cal->devices == 1 ? "" : "s");
    fprintf(f, "reference expert: D %u x H %u %s, %.3g MFLOP per row; measured in %.0f ms\n",
            cal->hidden, cal->inter, cal->dtype == LLEP_DTYPE_BF16 ? "bf16" : "f32",
            llep__calibration_flops_per_row(cal) / 1e6, cal->elapsed_ms);
    fprintf(f, "fixed cost per chunk: %s\n\n", fmt_ns(m->chunk_fixed_ns, b1, sizeof(b1)));
    fprintf(f, "%8s  %12s  %12s  %10s\n", "ROWS", "CHUNK", "GFLOP/S", "EFFICIENCY");
    for (uint32_t i = 0; i < m->num_points && i < LLEP_COST_MAX_POINTS; i++)
        fprintf(f, "%8u  %12s  %12.2f  %9.1f%%\n", m->rows[i],
                fmt_ns(llep__calibration_chunk_ns(cal, m->rows[i]), b1, sizeof(b1)),
                m->rate[i], top > 0 ? 100.0 * m->rate[i] / top : 0.0);
    fprintf(f, "\n%-26s  %10s  %12s  %10s  %s\n", "TRANSFER", "LATENCY", "GB/S", "1 MIB",
            "SOURCE");
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        const llep_cost_link *l = &m->link[k];
        char bw[32];
        if (l->ns_per_byte > 0)
            snprintf(bw, sizeof(bw), "%.2f", 1.0 / l->ns_per_byte);
        else
            snprintf(bw, sizeof(bw), "-");
        fprintf(f, "%-26s  %10s  %12s  %10s  %s\n", link_words[k],
                fmt_ns(l->latency_ns, b1, sizeof(b1)), bw,
                fmt_ns(l->latency_ns + 1048576.0 * l->ns_per_byte, b2, sizeof(b2)),
                k == LLEP_LINK_SAME ? "-" : cal->measured[k] ? "measured" : "nominal");
    }
}

/* Built with json-c (json-out.h); `llepctl tune --json` nests the object under
 * "calibration". */
json_object *llep__cost_table_object(const llep_calibration *cal) {
    const llep_cost_model *m = &cal->model;
    double top = top_rate(m);
    json_object *o = llep__jout_object(), *curve = llep__jout_array();
    json_object *links = llep__jout_array();
    char hash[17];

    llep__jout_str(o, "backend", m->backend);
    llep__jout_str(o, "device_name", m->device_name);
    llep__jout_u64(o, "devices", cal->devices);
    llep__jout_u64(o, "hidden", cal->hidden);
    llep__jout_u64(o, "inter", cal->inter);
    llep__jout_str(o, "dtype", cal->dtype == LLEP_DTYPE_BF16 ? "bf16" : "f32");
    llep__jout_f64(o, "chunk_fixed_ns", m->chunk_fixed_ns);
    llep__jout_u64(o, "devices_per_gpu", m->devices_per_gpu);
    llep__jout_u64(o, "devices_per_node", m->devices_per_node);
    llep__jout_f64(o, "elapsed_ms", cal->elapsed_ms);
    llep__jout_i64(o, "time", cal->time);
    snprintf(hash, sizeof(hash), "%016" PRIx64, llep__cost_hash(m));
    llep__jout_str(o, "hash", hash);
    for (uint32_t i = 0; i < m->num_points && i < LLEP_COST_MAX_POINTS; i++) {
        json_object *pt = llep__jout_object();
        llep__jout_u64(pt, "rows", m->rows[i]);
        llep__jout_f64(pt, "chunk_ns", llep__calibration_chunk_ns(cal, m->rows[i]));
        llep__jout_f64(pt, "rate_flops_per_ns", m->rate[i]);
        llep__jout_f64(pt, "efficiency", top > 0 ? m->rate[i] / top : 0.0);
        llep__jout_push(curve, pt);
    }
    llep__jout_add(o, "curve", curve);
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        json_object *l = llep__jout_object();
        llep__jout_str(l, "kind", link_names[k]);
        llep__jout_f64(l, "latency_ns", m->link[k].latency_ns);
        llep__jout_f64(l, "ns_per_byte", m->link[k].ns_per_byte);
        llep__jout_bool(l, "measured", cal->measured[k]);
        llep__jout_push(links, l);
    }
    llep__jout_add(o, "links", links);
    return o;
}

int llep__cost_table_json(FILE *f, const llep_calibration *cal) {
    return llep__jout_write(f, llep__cost_table_object(cal), LLEP_JOUT_LINE, NULL);
}
