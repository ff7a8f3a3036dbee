/* A calibration as a table and as JSON (cost-table.h). */
#include "cost-table.h"

#include <inttypes.h>
#include <math.h>

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

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v) {
    if (isfinite(v))
        fprintf(f, "%.9g", v);
    else
        fputs("null", f);
}

void llep__cost_table_json(FILE *f, const llep_calibration *cal) {
    const llep_cost_model *m = &cal->model;
    double top = top_rate(m);

    fputs("{\"backend\": ", f);
    json_str(f, m->backend);
    fputs(", \"device_name\": ", f);
    json_str(f, m->device_name);
    fprintf(f, ", \"devices\": %u, \"hidden\": %u, \"inter\": %u, \"dtype\": \"%s\"",
            cal->devices, cal->hidden, cal->inter,
            cal->dtype == LLEP_DTYPE_BF16 ? "bf16" : "f32");
    fputs(", \"chunk_fixed_ns\": ", f);
    json_num(f, m->chunk_fixed_ns);
    fprintf(f, ", \"devices_per_gpu\": %u, \"devices_per_node\": %u, \"elapsed_ms\": ",
            m->devices_per_gpu, m->devices_per_node);
    json_num(f, cal->elapsed_ms);
    fprintf(f, ", \"time\": %" PRId64 ", \"hash\": \"%016" PRIx64 "\", \"curve\": [", cal->time,
            llep__cost_hash(m));
    for (uint32_t i = 0; i < m->num_points && i < LLEP_COST_MAX_POINTS; i++) {
        fprintf(f, "%s{\"rows\": %u, \"chunk_ns\": ", i ? ", " : "", m->rows[i]);
        json_num(f, llep__calibration_chunk_ns(cal, m->rows[i]));
        fputs(", \"rate_flops_per_ns\": ", f);
        json_num(f, m->rate[i]);
        fputs(", \"efficiency\": ", f);
        json_num(f, top > 0 ? m->rate[i] / top : 0.0);
        fputc('}', f);
    }
    fputs("], \"links\": [", f);
    for (int k = 0; k < LLEP_LINK_KINDS; k++) {
        fprintf(f, "%s{\"kind\": \"%s\", \"latency_ns\": ", k ? ", " : "", link_names[k]);
        json_num(f, m->link[k].latency_ns);
        fputs(", \"ns_per_byte\": ", f);
        json_num(f, m->link[k].ns_per_byte);
        fprintf(f, ", \"measured\": %s}", cal->measured[k] ? "true" : "false");
    }
    fputs("]}", f);
}
