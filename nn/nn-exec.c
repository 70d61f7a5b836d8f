/*
 * Model compilation and execution: file reading, the batch-independence check, fusion,
 * oneDNN primitives, the liveness memory plan, sessions and runs.
 *
 * DESIGN (memory plan): steps run in file order. A runtime value's buffer is taken when its
 * producer runs and given back after its last consumer ran (views such as Reshape extend the
 * life of the buffer they alias). Graph inputs and outputs are never reused. Buffers come from
 * one arena per session; a first-fit free list over offsets decides where each goes, so the
 * arena is sized once at load and a run only moves pointers it already has.
 */
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nn-internal.h"


/* A graph compiled for one batch size: primitives, steps and memory plan. */
typedef struct nn_plan {
    nn_graph g;
    uint32_t batch;
    int *steps;
    size_t n_steps;
    size_t arena_bytes, scratch_bytes;
} nn_plan;

/* Plans per model: batch 1, and max_batch when it is above 1 (see nn_session_run). */
#define NN_MAX_PLANS 2

struct nn_model {
    nn_plan plan[NN_MAX_PLANS];
    int n_plans;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    uint32_t max_batch;
    int n_threads;
    /* side by side (nn_session_run): lanes run plan 0 one sample at a time, or, with
     * lane_chunks, plan 1 (created for 1 thread) on a chunk of samples each */
    bool side_by_side, lane_chunks;
    bool dynamic;
    size_t arena_bytes, scratch_bytes; /* largest over the plans: what a session allocates */
    size_t n_meta;
    char **meta_k, **meta_v;
    size_t n_op_types;
    char **op_names;
    size_t *op_counts;
    nn_model_stats stats;
    char *producer;
    nn_tensor_info *in_info, *out_info;
};

/* What one thread needs to run a plan: lane 0 runs every plan; the others (sessions of more
 * than one thread, running samples side by side) the batch-1 plan, and the chunk plan when
 * the model has one. */
typedef struct nn_lane {
    uint8_t *arena;
    void *scratch;
    dnnl_stream_t stream;
    dnnl_memory_t *mems[NN_MAX_PLANS];
    double *prof_ns[NN_MAX_PLANS]; /* XREG_NN_PROFILE: time per step, summed */
    uint64_t prof_runs[NN_MAX_PLANS];
} nn_lane;

struct nn_session {
    const nn_model *m; /* its n_threads is the session's */
    nn_lane *lane;     /* session_lanes(m) of them */
};

static double mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* oneDNN primitive (a MatMul/Gemm as a 1x1 convolution apart), nn's Winograd (F(2x2) or
 * F(4x4)), another of nn's own fast kernels (a step
 * whose op is not the table's: squeeze-excitation, Softmax rows), or the op's reference
 * kernel */
static const char *step_engine(const nn_node *n)
{
    if (n->wino)
        return nn_wino_m(n->wino) == 4 ? "Winograd4" : "Winograd";
    if (n->mm_conv)
        return "oneDNN-1x1";
    return n->prim ? "oneDNN" : n->op != nn_op_find(n->op_type) ? "nn" : "reference";
}

static int session_lanes(const nn_model *m);

/* Time per op type and engine (oneDNN primitive, Winograd, nn's own kernel), per run, on
 * stderr: where a model spends its time, without DNNL_VERBOSE's per-call lines. */
static void profile_print(const nn_session *s)
{
    const char *mode = getenv("XREG_NN_PROFILE");
    bool every_step = mode && strcmp(mode, "steps") == 0;
    for (int p = 0; p < s->m->n_plans; p++) {
        const nn_plan *pl = &s->m->plan[p];
        /* summed over the lanes: which lane runs a batch's samples is not fixed */
        double *ns = calloc(pl->n_steps + 1, sizeof(double));
        bool *seen = calloc(pl->n_steps + 1, sizeof(bool));
        uint64_t runs = 0;
        if (!ns || !seen) {
            free(ns);
            free(seen);
            return;
        }
        for (int i = 0; i < session_lanes(s->m); i++) {
            const nn_lane *ln = &s->lane[i];
            if (!ln->prof_ns[p])
                continue;
            runs += ln->prof_runs[p];
            for (size_t st = 0; st < pl->n_steps; st++)
                ns[st] += ln->prof_ns[p][st];
        }
        if (!runs) {
            free(ns);
            free(seen);
            continue;
        }
        double total = 0;
        for (size_t st = 0; st < pl->n_steps; st++)
            total += ns[st];
        fprintf(stderr, "nn profile: batch %lld, %llu runs, %.3f ms per run\n",
                (long long)pl->batch, (unsigned long long)runs, total / 1e6 / (double)runs);
        for (size_t st = 0; st < pl->n_steps; st++) {
            if (seen[st])
                continue;
            const nn_node *n = &pl->g.nodes[pl->steps[st]];
            const char *engine = step_engine(n);
            double t = 0;
            int count = 0;
            for (size_t o = st; o < pl->n_steps; o++) {
                const nn_node *q = &pl->g.nodes[pl->steps[o]];
                if (!seen[o] && step_engine(q) == engine && strcmp(q->op_type, n->op_type) == 0) {
                    seen[o] = true;
                    t += ns[o];
                    count++;
                }
            }
            fprintf(stderr, "  %-22s %-10s %4d steps %9.3f ms %5.1f%%\n", n->op_type, engine,
                    count, t / 1e6 / (double)runs,
                    total > 0 ? 100.0 * t / total : 0.0);
        }
        /* every step, with its output's shape: which of a type's steps cost */
        for (size_t st = 0; every_step && st < pl->n_steps; st++) {
            const nn_node *n = &pl->g.nodes[pl->steps[st]];
            const nn_value *y = &pl->g.values[n->out[0]];
            char dims[96] = "";
            for (int d = 0, o = 0; d < y->rank && o < (int)sizeof(dims) - 24; d++)
                o += snprintf(dims + o, sizeof(dims) - (size_t)o, "%s%lld", d ? "x" : "",
                              (long long)y->dims[d]);
            fprintf(stderr, "  step %4zu %-22s %-10s %-24s %9.3f ms\n", st, n->op_type,
                    step_engine(n), dims, ns[st] / 1e6 / (double)runs);
        }
        free(ns);
        free(seen);
    }
}

nn_params nn_params_default(void)
{
    return (nn_params){.max_batch = 1, .optimize = true, .n_threads = 1};
}

/* ---------------------------------------------------------------- plan */

typedef struct block {
    size_t off, size;
} block;

typedef struct freelist {
    block *b;
    size_t n, cap;
    size_t top;
} freelist;

static size_t fl_take(freelist *f, size_t size)
{
    size = (size + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
    if (!size)
        size = NN_ALIGN;
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < f->n; i++)
        if (f->b[i].size >= size && (best == SIZE_MAX || f->b[i].size < f->b[best].size))
            best = i;
    if (best != SIZE_MAX) {
        size_t off = f->b[best].off;
        f->b[best].off += size;
        f->b[best].size -= size;
        if (!f->b[best].size) {
            memmove(f->b + best, f->b + best + 1, (f->n - best - 1) * sizeof(block));
            f->n--;
        }
        return off;
    }
    /* grow: extend a free block touching the top, else the top itself */
    if (f->n && f->b[f->n - 1].off + f->b[f->n - 1].size == f->top) {
        size_t off = f->b[f->n - 1].off;
        f->top = off + size;
        f->n--;
        return off;
    }
    size_t off = f->top;
    f->top += size;
    return off;
}

static bool fl_give(freelist *f, size_t off, size_t size)
{
    size = (size + NN_ALIGN - 1) / NN_ALIGN * NN_ALIGN;
    if (!size)
        size = NN_ALIGN;
    if (f->n == f->cap) {
        size_t cap = f->cap ? 2 * f->cap : 64;
        block *b = realloc(f->b, cap * sizeof(block));
        if (!b)
            return false;
        f->b = b;
        f->cap = cap;
    }
    size_t i = 0;
    while (i < f->n && f->b[i].off < off)
        i++;
    memmove(f->b + i + 1, f->b + i, (f->n - i) * sizeof(block));
    f->b[i] = (block){off, size};
    f->n++;
    /* merge with neighbours */
    if (i + 1 < f->n && f->b[i].off + f->b[i].size == f->b[i + 1].off) {
        f->b[i].size += f->b[i + 1].size;
        memmove(f->b + i + 1, f->b + i + 2, (f->n - i - 2) * sizeof(block));
        f->n--;
    }
    if (i > 0 && f->b[i - 1].off + f->b[i - 1].size == f->b[i].off) {
        f->b[i - 1].size += f->b[i].size;
        memmove(f->b + i, f->b + i + 1, (f->n - i - 1) * sizeof(block));
        f->n--;
    }
    return true;
}

static int root_of(const nn_graph *g, int v)
{
    while (g->values[v].view_of >= 0)
        v = g->values[v].view_of;
    return v;
}

static xr_code plan_memory(nn_plan *m, xr_error *err)
{
    nn_graph *g = &m->g;
    size_t n_live = 0;
    for (size_t i = 0; i < g->n_nodes; i++)
        n_live += !g->nodes[i].dead;
    if (!(m->steps = calloc(n_live + 1, sizeof(int))))
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    for (size_t i = 0; i < g->n_nodes; i++)
        if (!g->nodes[i].dead)
            m->steps[m->n_steps++] = (int)i;
    for (size_t v = 0; v < g->n_values; v++) {
        g->values[v].last_use = -1;
        g->values[v].view_of = -1;
    }
    /* views: Reshape-like steps alias their input */
    for (size_t s = 0; s < m->n_steps; s++) {
        nn_node *n = &g->nodes[m->steps[s]];
        if (n->op->view && n->in[0] >= 0 && !g->values[n->in[0]].data && !n->prim && !n->n_pre)
            g->values[n->out[0]].view_of = n->in[0];
    }
    for (size_t s = 0; s < m->n_steps; s++) {
        nn_node *n = &g->nodes[m->steps[s]];
        for (int k = 0; k <= n->n_in + n->n_pre; k++) {
            int v = k < n->n_in ? n->in[k] : k == n->n_in ? n->sum_in : n->pre[k - n->n_in - 1].src;
            if (v < 0 || g->values[v].data || g->values[v].released)
                continue;
            int r = root_of(g, v);
            g->values[r].last_use = (int)s;
        }
        for (int k = 0; k < n->n_out; k++) {
            int v = n->out[k];
            if (v < 0 || g->values[v].view_of < 0)
                continue;
            /* a view keeps its root alive at least as long as itself: filled below */
        }
    }
    /* a residual accumulated by a sum post-op and read by nothing later: the step writes its
     * result over it instead of copying it first */
    for (size_t s = 0; s < m->n_steps; s++) {
        nn_node *n = &g->nodes[m->steps[s]];
        int r = n->sum_in, o = n->out[0];
        if (r < 0 || !n->prim)
            continue;
        nn_value *rv = &g->values[r], *ov = &g->values[o];
        if (rv->data || rv->is_input || rv->is_output || rv->view_of >= 0 ||
            rv->last_use != (int)s || ov->view_of >= 0 || ov->n_bytes != rv->n_bytes)
            continue;
        bool viewed = false;
        for (size_t v = 0; v < g->n_values && !viewed; v++)
            viewed = g->values[v].view_of == r;
        if (!viewed)
            ov->view_of = r;
    }
    /* propagate view lifetimes to roots (views are created after their roots) */
    for (size_t v = g->n_values; v-- > 0;) {
        nn_value *val = &g->values[v];
        if (val->view_of >= 0 && val->last_use >= 0) {
            int r = root_of(g, (int)v);
            if (g->values[r].last_use < val->last_use)
                g->values[r].last_use = val->last_use;
        }
    }
    for (size_t i = 0; i < g->n_outputs; i++)
        g->values[root_of(g, g->outputs[i])].last_use = INT32_MAX;
    freelist f = {0};
    for (size_t i = 0; i < g->n_inputs; i++) {
        nn_value *v = &g->values[g->inputs[i]];
        v->offset = fl_take(&f, v->n_bytes);
        v->last_use = INT32_MAX;
    }
    xr_code rc = XR_OK;
    for (size_t s = 0; s < m->n_steps && !rc; s++) {
        nn_node *n = &g->nodes[m->steps[s]];
        for (int k = 0; k < n->n_out + n->n_pre; k++) {
            int v = k < n->n_pre ? n->pre[k].dst : n->out[k - n->n_pre];
            if (v < 0 || g->values[v].view_of >= 0)
                continue;
            g->values[v].offset = fl_take(&f, g->values[v].n_bytes);
            if (g->values[v].last_use < 0 && !fl_give(&f, g->values[v].offset, g->values[v].n_bytes))
                rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        }
        for (int k = 0; k <= n->n_in + n->n_pre && !rc; k++) {
            int v = k < n->n_in ? n->in[k] : k == n->n_in ? n->sum_in : n->pre[k - n->n_in - 1].src;
            if (v < 0 || g->values[v].data || g->values[v].released)
                continue;
            int r = root_of(g, v);
            if (g->values[r].last_use == (int)s) {
                g->values[r].last_use = -2; /* given back once */
                if (!fl_give(&f, g->values[r].offset, g->values[r].n_bytes))
                    rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
            }
        }
    }
    m->arena_bytes = f.top;
    free(f.b);
    if (!rc && m->arena_bytes > NN_ARENA_MAX_BYTES)
        rc = xr_error_set(err, XR_E_LIMIT,
                          "activations need %zu bytes at batch %u, at most %llu",
                          m->arena_bytes, m->batch, (unsigned long long)NN_ARENA_MAX_BYTES);
    for (size_t s = 0; s < m->n_steps; s++) {
        nn_node *n = &g->nodes[m->steps[s]];
        if (n->scratch_bytes > m->scratch_bytes)
            m->scratch_bytes = n->scratch_bytes;
    }
    return rc;
}

/* ---------------------------------------------------------------- load */

static xr_code read_file(const char *path, uint8_t **ret, size_t *ret_n, xr_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return xr_error_errno(err, errno, "cannot open \"%s\"", path);
    struct stat st;
    xr_code rc = XR_OK;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) < 0) {
        rc = xr_error_errno(err, errno, "cannot stat \"%s\"", path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = xr_error_set(err, XR_E_INPUT, "\"%s\" is not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > NN_MODEL_MAX_BYTES) {
        rc = xr_error_set(err, XR_E_LIMIT, "\"%s\" has %lld bytes, at most %lld allowed "
                          "(larger weights go to external data)",
                          path, (long long)st.st_size, (long long)NN_MODEL_MAX_BYTES);
        goto out;
    }
    size_t n = (size_t)st.st_size, done = 0;
    if (!(buf = malloc(n ? n : 1))) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory reading \"%s\"", path);
        goto out;
    }
    while (done < n) {
        ssize_t r = read(fd, buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r < 0 ? xr_error_errno(err, errno, "reading \"%s\"", path)
                       : xr_error_set(err, XR_E_IO, "\"%s\" shrank while reading", path);
            goto out;
        }
        done += (size_t)r;
    }
    *ret = buf;
    *ret_n = n;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

static char *dup_or_empty(const char *s) { return strdup(s ? s : ""); }

static xr_code collect_info(nn_model *m, const Onnx__ModelProto *mp, xr_error *err)
{
    const Onnx__GraphProto *gp = mp->graph;
    m->n_meta = mp->n_metadata_props;
    m->meta_k = calloc(m->n_meta + 1, sizeof(char *));
    m->meta_v = calloc(m->n_meta + 1, sizeof(char *));
    if (!m->meta_k || !m->meta_v)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    for (size_t i = 0; i < m->n_meta; i++) {
        m->meta_k[i] = dup_or_empty(mp->metadata_props[i]->key);
        m->meta_v[i] = dup_or_empty(mp->metadata_props[i]->value);
        if (!m->meta_k[i] || !m->meta_v[i])
            return xr_error_set(err, XR_E_NOMEM, "out of memory");
    }
    /* op types, sorted, counted */
    m->op_names = calloc(gp->n_node + 1, sizeof(char *));
    m->op_counts = calloc(gp->n_node + 1, sizeof(size_t));
    if (!m->op_names || !m->op_counts)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    for (size_t i = 0; i < gp->n_node; i++) {
        const char *op = gp->node[i]->op_type ? gp->node[i]->op_type : "";
        size_t j = 0;
        while (j < m->n_op_types && strcmp(m->op_names[j], op) < 0)
            j++;
        if (j < m->n_op_types && strcmp(m->op_names[j], op) == 0) {
            m->op_counts[j]++;
            continue;
        }
        memmove(m->op_names + j + 1, m->op_names + j, (m->n_op_types - j) * sizeof(char *));
        memmove(m->op_counts + j + 1, m->op_counts + j, (m->n_op_types - j) * sizeof(size_t));
        if (!(m->op_names[j] = strdup(op)))
            return xr_error_set(err, XR_E_NOMEM, "out of memory");
        m->op_counts[j] = 1;
        m->n_op_types++;
    }
    char prod[256];
    snprintf(prod, sizeof(prod), "%s%s%s", mp->producer_name ? mp->producer_name : "",
             mp->producer_version && mp->producer_version[0] ? " " : "",
             mp->producer_version ? mp->producer_version : "");
    if (!(m->producer = strdup(prod)))
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    m->stats.producer = m->producer;
    m->stats.opset = m->plan[0].g.opset;
    m->stats.n_nodes_file = gp->n_node;
    for (size_t i = 0; i < m->plan[0].g.n_values; i++)
        if (m->plan[0].g.values[i].is_initializer)
            m->stats.n_parameters += (uint64_t)m->plan[0].g.values[i].n_elems;
    m->in_info = calloc(m->plan[0].g.n_inputs + 1, sizeof(nn_tensor_info));
    m->out_info = calloc(m->plan[0].g.n_outputs + 1, sizeof(nn_tensor_info));
    if (!m->in_info || !m->out_info)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    for (int io = 0; io < 2; io++) {
        size_t cnt = io ? m->plan[0].g.n_outputs : m->plan[0].g.n_inputs;
        for (size_t i = 0; i < cnt; i++) {
            const nn_graph *g1 = &m->plan[0].g;
            const nn_value *v = &g1->values[io ? g1->outputs[i] : g1->inputs[i]];
            nn_tensor_info *t = io ? &m->out_info[i] : &m->in_info[i];
            t->name = v->name;
            t->dtype = v->dtype;
            t->rank = v->rank;
            memcpy(t->dims, v->dims, sizeof(t->dims));
            t->batch_dynamic = m->dynamic;
            t->sample_bytes = v->n_bytes;
        }
    }
    return XR_OK;
}

/*
 * Padding a batch or running it one sample at a time is exact when no step mixes samples.
 * Check, comparing the graph inferred at batch 1 and at batch B: every runtime tensor has
 * exactly one axis that scales by B (the sample axis; exporters move it, e.g. PyTorch's attention
 * works sequence-first), inputs and outputs have it at 0, and no step reduces, concatenates,
 * slices or contracts along it.
 */
static int batch_axis(const nn_value *a, const nn_value *b, int64_t batch)
{
    int ax = -1;
    if (a->rank != b->rank)
        return -2;
    for (int d = 0; d < a->rank; d++) {
        if (a->dims[d] == b->dims[d])
            continue;
        if (ax >= 0 || b->dims[d] != batch * a->dims[d])
            return -2;
        ax = d;
    }
    return ax;
}

static xr_code check_batch(const nn_graph *g1, const nn_graph *gb, int64_t batch, xr_error *err)
{
    if (g1->n_values != gb->n_values)
        return xr_error_set(err, XR_E_INTERNAL, "graph differs between batch sizes");
    int *bax = calloc(g1->n_values + 1, sizeof(int));
    if (!bax)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    xr_code rc = XR_OK;
    for (size_t i = 0; i < g1->n_values && !rc; i++) {
        const nn_value *a = &g1->values[i];
        const nn_value *b = &gb->values[i];
        bax[i] = -1;
        if (a->data || !a->known || b->data)
            continue;
        bax[i] = batch_axis(a, b, batch);
        if (bax[i] < 0 || ((a->is_input || a->is_output) && bax[i] != 0))
            rc = xr_error_set(err, XR_E_UNSUPPORTED,
                              "tensor \"%s\" does not scale with the batch on one axis%s, so "
                              "samples cannot run one at a time (use max_batch 1)",
                              a->name, a->is_input || a->is_output ? " (0)" : "");
    }
    for (size_t i = 0; i < g1->n_nodes && !rc; i++) {
        const nn_node *n = &g1->nodes[i];
        if (n->dead || n->in[0] < 0)
            continue;
        int ax = bax[n->in[0]];
        if (ax < 0)
            continue;
        const char *op = n->op_type;
        bool mix = false;
        if (!strcmp(op, "Softmax") || !strcmp(op, "LogSoftmax"))
            mix = ax == n->a.axis || (n->a.i1 && ax > n->a.axis);
        else if (!strcmp(op, "LayerNormalization"))
            mix = ax >= n->a.axis;
        else if (!strcmp(op, "ReduceMean") || !strcmp(op, "ReduceSum"))
            mix = n->a.i1 == 0 && n->a.axes[ax];
        else if (!strcmp(op, "Concat") || !strcmp(op, "Split") || !strcmp(op, "Gather"))
            mix = ax == n->a.axis;
        else if (!strcmp(op, "Slice"))
            mix = n->a.starts[ax] != 0 || n->a.steps[ax] != 1 ||
                  g1->values[n->out[0]].dims[ax] != g1->values[n->in[0]].dims[ax];
        else if (!strcmp(op, "MatMul"))
            mix = ax == g1->values[n->in[0]].rank - 1 ||
                  (bax[n->in[1]] >= 0 && bax[n->in[1]] == g1->values[n->in[1]].rank - 2);
        else if (!strcmp(op, "Gemm") || !strcmp(op, "Conv") || strstr(op, "Pool") ||
                 !strcmp(op, "BatchNormalization") || !strcmp(op, "Flatten"))
            mix = ax != 0 || (n->n_in > 1 && n->in[1] >= 0 && bax[n->in[1]] >= 0);
        if (mix)
            rc = xr_error_set(err, XR_E_UNSUPPORTED,
                              "node \"%s\" (%s) combines samples along axis %d, so samples "
                              "cannot run one at a time (use max_batch 1)",
                              n->name, op, ax);
    }
    free(bax);
    return rc;
}

/* Constants that only feed oneDNN steps as reordered weights: oneDNN holds its own copy, so
 * ours is freed (the model's resident size is then about one copy of the weights). */
static void release_weights(nn_graph *g, const nn_graph *borrower)
{
    bool *keep = calloc(g->n_values + 1, 1);
    if (!keep)
        return; /* keeping them is only a waste */
    for (size_t i = 0; i < g->n_nodes; i++) {
        const nn_node *n = &g->nodes[i];
        if (n->dead)
            continue;
        for (int k = 0; k < n->n_in; k++) {
            int v = n->in[k];
            if (v < 0)
                continue;
            bool reordered = false;
            if (k == 1 && n->wino)
                reordered = true; /* nn-wino.c holds them transformed */
            else if (k == 1 && n->prim)
                for (int a = 0; a < n->n_args; a++)
                    reordered |= n->args[a].arg == DNNL_ARG_WEIGHTS &&
                                 (n->args[a].value == -1 || n->args[a].value == -3);
            if (!reordered)
                keep[v] = true;
        }
        if (n->sum_in >= 0)
            keep[n->sum_in] = true;
        if (n->bias_in >= 0)
            keep[n->bias_in] = true;
        for (int k = 0; k < n->n_pre; k++)
            keep[n->pre[k].src] = true;
    }
    for (size_t i = 0; i < g->n_outputs; i++)
        keep[g->outputs[i]] = true;
    /* what a graph built later still borrows (and did not release itself) stays */
    for (size_t v = 0; borrower && v < g->n_values && v < borrower->n_values; v++)
        keep[v] |= borrower->values[v].borrowed && borrower->values[v].data &&
                   borrower->values[v].data == g->values[v].data;
    for (size_t v = 0; v < g->n_values; v++) {
        nn_value *val = &g->values[v];
        if (val->data && !keep[v]) {
            if (!val->borrowed)
                free(val->data);
            val->data = NULL;
            val->released = true;
        }
    }
    free(keep);
}

/* Fusion, primitives, memory plan of one plan's graph; donor (or NULL) lends its reordered
 * weights where they are the same. */
static xr_code compile_plan(nn_model *m, nn_plan *pl, const nn_graph *donor, const nn_params *p,
                            xr_error *err)
{
    xr_code rc;
    pl->g.engine = m->engine;
    pl->g.stream = m->stream;
    pl->g.donor = donor;
    if (p->optimize) {
        size_t n_fused = nn_graph_optimize(&pl->g);
        if (pl == &m->plan[0])
            m->stats.n_fused = n_fused;
    }
    for (size_t i = 0; i < pl->g.n_nodes; i++) {
        nn_node *n = &pl->g.nodes[i];
        if (n->dead || !n->op->prepare)
            continue;
        if ((rc = n->op->prepare(&pl->g, n, err)))
            return rc;
    }
    if ((rc = nn_layout_fixup(&pl->g, err)) || (rc = plan_memory(pl, err)))
        return rc;
    pl->g.donor = NULL;
    if (pl->arena_bytes > m->arena_bytes)
        m->arena_bytes = pl->arena_bytes;
    if (pl->scratch_bytes > m->scratch_bytes)
        m->scratch_bytes = pl->scratch_bytes;
    return XR_OK;
}

/*
 * Whether convolutions do at least as many multiply-adds as MatMul/Gemm with constant weights:
 * such a model runs a batch one sample per thread (nn_session_run); a product-heavy one runs
 * chunks, since oneDNN's AVX2 sgemm packs the weights at every call and taller products pay
 * that once per chunk (measured: docs/nn.md "Samples side by side").
 */
static bool convolutions_dominate(const nn_graph *g)
{
    double conv = 0, products = 0;
    for (size_t i = 0; i < g->n_nodes; i++) {
        const nn_node *n = &g->nodes[i];
        if (n->dead || n->n_in < 2 || n->in[1] < 0 || n->n_out < 1)
            continue;
        const nn_value *w = &g->values[n->in[1]], *y = &g->values[n->out[0]];
        bool constant = w->data || w->released || w->borrowed || w->is_initializer;
        if (strcmp(n->op_type, "Conv") == 0 && w->rank >= 1 && w->dims[0] > 0)
            conv += (double)y->n_elems * (double)(w->n_elems / w->dims[0]);
        else if ((strcmp(n->op_type, "MatMul") == 0 || strcmp(n->op_type, "Gemm") == 0) &&
                 constant && y->rank >= 1 && y->dims[y->rank - 1] > 0)
            products += (double)y->n_elems * (double)w->n_elems / (double)y->dims[y->rank - 1];
    }
    return conv >= products;
}

/*
 * A batch-dynamic model with max_batch B > 1 gets two plans: batch 1 (latency) and batch B
 * (throughput: oneDNN's primitives see the whole batch, so weights are read once per batch and
 * the matrix products are B times taller). Both graphs are built before the protobuf is freed;
 * the batch-B one shares the batch-1 one's reordered weights wherever oneDNN chose the same
 * layout, so the model holds about one copy of its weights. The shapes of the two graphs also
 * drive the check that samples never mix, which lets a run pad or split a batch freely.
 */
static xr_code compile(nn_model *m, Onnx__ModelProto **mpp, const char *base_dir,
                       const nn_params *p, xr_error *err)
{
    const Onnx__ModelProto *mp = *mpp;
    xr_code rc;
    bool dyn = false;
    nn_plan *p1 = &m->plan[0], *pb = &m->plan[1];
    m->n_plans = 1;
    p1->batch = 1;
    if ((rc = nn_graph_build(mp, base_dir, 1, p, NULL, &p1->g, &dyn, err)))
        return rc;
    m->dynamic = dyn;
    m->max_batch = dyn ? p->max_batch : 1;
    uint32_t threads = (uint32_t)p->n_threads, chunk = (m->max_batch + threads - 1) / threads;
    if (threads > 1 && m->max_batch >= threads) {
        bool conv = convolutions_dominate(&p1->g);
        m->lane_chunks = !conv && chunk >= 2;
        m->side_by_side = conv || m->lane_chunks;
    }
    if (m->max_batch > 1) {
        /* the batch graph borrows the batch-1 graph's initializers: one copy of the weights */
        bool dyn_b = false;
        m->n_plans = 2;
        pb->batch = m->lane_chunks ? chunk : m->max_batch;
        if ((rc = nn_graph_build(mp, base_dir, pb->batch, p, &p1->g, &pb->g, &dyn_b, err)) ||
            (rc = check_batch(&p1->g, &pb->g, pb->batch, err)))
            return rc;
    }
    if ((rc = collect_info(m, mp, err)))
        return rc;
    /* everything needed is copied out: free the protobuf before weights are reordered */
    onnx__model_proto__free_unpacked(*mpp, NULL);
    *mpp = NULL;
    /* oneDNN reads the thread count when it creates a primitive (an OpenMP setting of this
     * thread), and splits the primitive's work for that count at every run */
    m->n_threads = p->n_threads;
    int saved_threads = omp_get_max_threads();
    for (int i = 0; !rc && i < m->n_plans; i++) {
        /* the lanes' chunk plan only ever runs on one thread */
        omp_set_num_threads(i && m->lane_chunks ? 1 : p->n_threads);
        rc = compile_plan(m, &m->plan[i], i ? &p1->g : NULL, p, err);
    }
    omp_set_num_threads(saved_threads);
    if (rc)
        return rc;
    /* the batch plan first: what it still borrows, the batch-1 plan keeps */
    if (m->n_plans > 1)
        release_weights(&pb->g, NULL);
    release_weights(&p1->g, m->n_plans > 1 ? &pb->g : NULL);
    m->stats.n_steps = p1->n_steps;
    m->stats.arena_bytes = m->arena_bytes;
    m->stats.side_by_side = m->side_by_side;
    m->stats.lane_batch = m->lane_chunks ? pb->batch : 1;
    return XR_OK;
}

static xr_code load_bytes(uint8_t *owned, const void *buf, size_t n_bytes, const char *base_dir,
                          const nn_params *params, nn_model **ret_model, xr_error *err);

xr_code nn_model_load_buffer(const void *buf, size_t n_bytes, const char *base_dir,
                             const nn_params *params, nn_model **ret_model, xr_error *err)
{
    return load_bytes(NULL, buf, n_bytes, base_dir, params, ret_model, err);
}

/* owned (may be NULL) is the caller's malloc'ed copy of buf, freed as soon as it is parsed. */
static xr_code load_bytes(uint8_t *owned, const void *buf, size_t n_bytes, const char *base_dir,
                          const nn_params *params, nn_model **ret_model, xr_error *err)
{
    nn_params p = params ? *params : nn_params_default();
    xr_code rc = XR_OK;
    if (!buf || !ret_model)
        rc = xr_error_set(err, XR_E_INTERNAL, "nn_model_load_buffer: NULL argument");
    else if (p.max_batch < 1 || p.max_batch > NN_MAX_BATCH)
        rc = xr_error_set(err, XR_E_LIMIT, "max_batch %u is outside [1, %d]", p.max_batch,
                          NN_MAX_BATCH);
    else if (p.n_threads < 1 || p.n_threads > NN_MAX_THREADS)
        rc = xr_error_set(err, XR_E_CONFIG, "n_threads %d is outside [1, %d]", p.n_threads,
                          NN_MAX_THREADS);
    else if (n_bytes > NN_MODEL_MAX_BYTES)
        rc = xr_error_set(err, XR_E_LIMIT, "model of %zu bytes, at most %lld allowed", n_bytes,
                          (long long)NN_MODEL_MAX_BYTES);
    else if (n_bytes == 0)
        rc = xr_error_set(err, XR_E_INPUT, "the model file is empty");
    if (rc) {
        free(owned);
        return rc;
    }
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, n_bytes, buf);
    free(owned);
    if (!mp)
        return xr_error_set(err, XR_E_INPUT,
                            "not a valid ONNX model: the protobuf is truncated or corrupt");
    nn_model *m = calloc(1, sizeof(*m));
    if (!m) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = nn_dnnl_check(dnnl_engine_create(&m->engine, dnnl_cpu, 0), NULL, "engine", err)) ||
        (rc = nn_dnnl_check(dnnl_stream_create(&m->stream, m->engine, dnnl_stream_default_flags),
                            NULL, "stream", err)))
        goto out;
    if ((rc = compile(m, &mp, base_dir, &p, err)))
        goto out;
    *ret_model = m;
    m = NULL;
out:
    if (mp)
        onnx__model_proto__free_unpacked(mp, NULL);
    nn_model_free(m);
    return rc;
}

xr_code nn_model_load(const char *path, const nn_params *params, nn_model **ret_model,
                      xr_error *err)
{
    uint8_t *buf = NULL;
    size_t n = 0;
    if (!path)
        return xr_error_set(err, XR_E_INTERNAL, "nn_model_load: NULL path");
    xr_code rc = read_file(path, &buf, &n, err);
    if (rc)
        return rc;
    char *dir = strdup(path);
    if (!dir) {
        free(buf);
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        slash == dir ? (void)(dir[1] = '\0') : (void)(*slash = '\0');
    rc = load_bytes(buf, buf, n, slash ? dir : ".", params, ret_model, err);
    free(dir);
    if (rc)
        xr_error_prefix(err, "loading \"%s\": ", path);
    return rc;
}

nn_model *nn_model_free(nn_model *m)
{
    if (!m)
        return NULL;
    /* the batch plan borrows the batch-1 plan's weights: freed first */
    for (int i = NN_MAX_PLANS; i-- > 0;) {
        nn_graph_done(&m->plan[i].g);
        free(m->plan[i].steps);
    }
    for (size_t i = 0; i < m->n_meta; i++) {
        free(m->meta_k[i]);
        free(m->meta_v[i]);
    }
    free(m->meta_k);
    free(m->meta_v);
    for (size_t i = 0; i < m->n_op_types; i++)
        free(m->op_names[i]);
    free(m->op_names);
    free(m->op_counts);
    free(m->producer);
    free(m->in_info);
    free(m->out_info);
    if (m->stream)
        dnnl_stream_destroy(m->stream);
    if (m->engine)
        dnnl_engine_destroy(m->engine);
    free(m);
    return NULL;
}

size_t nn_model_n_inputs(const nn_model *m) { return m->plan[0].g.n_inputs; }
size_t nn_model_n_outputs(const nn_model *m) { return m->plan[0].g.n_outputs; }
uint32_t nn_model_max_batch(const nn_model *m) { return m->max_batch; }
int nn_model_threads(const nn_model *m) { return m->n_threads; }

bool nn_model_input(const nn_model *m, size_t i, nn_tensor_info *ret)
{
    if (i >= m->plan[0].g.n_inputs)
        return false;
    *ret = m->in_info[i];
    return true;
}

bool nn_model_output(const nn_model *m, size_t i, nn_tensor_info *ret)
{
    if (i >= m->plan[0].g.n_outputs)
        return false;
    *ret = m->out_info[i];
    return true;
}

size_t nn_model_n_metadata(const nn_model *m) { return m->n_meta; }

bool nn_model_metadata(const nn_model *m, size_t i, const char **ret_key, const char **ret_value)
{
    if (i >= m->n_meta)
        return false;
    *ret_key = m->meta_k[i];
    *ret_value = m->meta_v[i];
    return true;
}

const char *nn_model_metadata_get(const nn_model *m, const char *key)
{
    for (size_t i = 0; i < m->n_meta; i++)
        if (strcmp(m->meta_k[i], key) == 0)
            return m->meta_v[i];
    return NULL;
}

void nn_model_stats_get(const nn_model *m, nn_model_stats *ret) { *ret = m->stats; }
size_t nn_model_n_op_types(const nn_model *m) { return m->n_op_types; }

bool nn_model_op_type(const nn_model *m, size_t i, const char **ret_name, size_t *ret_count)
{
    if (i >= m->n_op_types)
        return false;
    *ret_name = m->op_names[i];
    *ret_count = m->op_counts[i];
    return true;
}

/* ---------------------------------------------------------------- sessions */

static void lane_done(const nn_model *m, nn_lane *ln)
{
    for (int p = 0; p < m->n_plans; p++) {
        const nn_plan *pl = &m->plan[p];
        free(ln->prof_ns[p]);
        if (!ln->mems[p])
            continue;
        for (size_t st = 0; st < pl->n_steps; st++) {
            const nn_node *n = &pl->g.nodes[pl->steps[st]];
            for (int i = 0; i < n->n_args; i++) {
                dnnl_memory_t mem = ln->mems[p][st * NN_STEP_MEMS + i];
                if (mem && n->args[i].value != -1 && n->args[i].value != -3)
                    dnnl_memory_destroy(mem);
            }
            for (int i = 0; i < 2 * n->n_pre; i++) {
                dnnl_memory_t mem = ln->mems[p][st * NN_STEP_MEMS + NN_MAX_DNNL_ARGS + i];
                if (mem)
                    dnnl_memory_destroy(mem);
            }
        }
        free(ln->mems[p]);
    }
    if (ln->stream)
        dnnl_stream_destroy(ln->stream);
    free(ln->arena);
    free(ln->scratch);
}

/* A lane for plans [0, n_plans): one arena and one scratchpad sized for the largest (the plans
 * never run at the same time on a lane), and memory objects bound into them. */
static xr_code lane_init(const nn_model *m, nn_lane *ln, int n_plans, bool prof, xr_error *err)
{
    size_t arena = 0, scratch = 0;
    for (int p = 0; p < n_plans; p++) {
        if (m->plan[p].arena_bytes > arena)
            arena = m->plan[p].arena_bytes;
        if (m->plan[p].scratch_bytes > scratch)
            scratch = m->plan[p].scratch_bytes;
    }
    ln->arena = nn_aligned_alloc(arena);
    ln->scratch = scratch ? nn_aligned_alloc(scratch) : NULL;
    bool ok = ln->arena && (!scratch || ln->scratch);
    for (int p = 0; ok && p < n_plans; p++)
        ok = (ln->mems[p] = calloc(m->plan[p].n_steps * NN_STEP_MEMS + 1,
                                   sizeof(dnnl_memory_t))) != NULL;
    for (int p = 0; ok && prof && p < n_plans; p++)
        ok = (ln->prof_ns[p] = calloc(m->plan[p].n_steps + 1, sizeof(double))) != NULL;
    if (!ok)
        return xr_error_set(err, XR_E_NOMEM, "out of memory for a session of %zu bytes",
                            arena + scratch);
    xr_code rc;
    if ((rc = nn_dnnl_check(dnnl_stream_create(&ln->stream, m->engine, dnnl_stream_default_flags),
                            NULL, "stream", err)))
        return rc;
    nn_exec x = {.arena = ln->arena};
    for (int p = 0; p < n_plans; p++) {
        const nn_plan *pl = &m->plan[p];
        for (size_t st = 0; st < pl->n_steps; st++) {
            const nn_node *n = &pl->g.nodes[pl->steps[st]];
            for (int i = 0; i < n->n_args; i++) {
                const nn_dnnl_arg *a = &n->args[i];
                dnnl_memory_t *mem = &ln->mems[p][st * NN_STEP_MEMS + i];
                if (a->value == -1 || a->value == -3) {
                    *mem = a->mem; /* model-owned, shared read-only */
                    continue;
                }
                void *ptr = a->value == -2 ? ln->scratch
                                           : (uint8_t *)nn_ptr(&pl->g, &x, a->value) + a->byte_off;
                if ((rc = nn_dnnl_check(dnnl_memory_create(mem, &a->md, m->engine, ptr), n,
                                        "memory", err)))
                    return rc;
            }
            for (int i = 0; i < n->n_pre; i++) {
                dnnl_memory_t *mem = &ln->mems[p][st * NN_STEP_MEMS + NN_MAX_DNNL_ARGS + 2 * i];
                if ((rc = nn_dnnl_check(dnnl_memory_create(&mem[0], &n->pre[i].smd, m->engine,
                                                           nn_ptr(&pl->g, &x, n->pre[i].src)),
                                        n, "memory", err)) ||
                    (rc = nn_dnnl_check(dnnl_memory_create(&mem[1], &n->pre[i].dmd, m->engine,
                                                           nn_ptr(&pl->g, &x, n->pre[i].dst)),
                                        n, "memory", err)))
                    return rc;
            }
        }
    }
    return XR_OK;
}

/* Lanes a session needs: one per thread when runs of n_threads samples or more can happen. */
static int session_lanes(const nn_model *m)
{
    return m->side_by_side ? m->n_threads : 1;
}

xr_code nn_session_new(const nn_model *m, int n_threads, nn_session **ret_session, xr_error *err)
{
    if (!m || !ret_session)
        return xr_error_set(err, XR_E_INTERNAL, "nn_session_new: NULL argument");
    if (n_threads == 0)
        n_threads = m->n_threads;
    if (n_threads != m->n_threads)
        return xr_error_set(err, XR_E_CONFIG,
                            "a session of %d threads for a model loaded for %d: oneDNN splits "
                            "each primitive's work for the thread count it was created with, so "
                            "load the model with nn_params.n_threads = %d",
                            n_threads, m->n_threads, n_threads);
    xr_code rc = XR_OK;
    nn_session *s = calloc(1, sizeof(*s));
    if (!s)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    s->m = m;
    s->lane = calloc((size_t)session_lanes(m), sizeof(nn_lane));
    if (!s->lane) {
        free(s);
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    }
    const char *prof = getenv("XREG_NN_PROFILE");
    bool profile = prof && *prof && strcmp(prof, "0") != 0;
    for (int i = 0; i < session_lanes(m) && !rc; i++)
        rc = lane_init(m, &s->lane[i], i && !m->lane_chunks ? 1 : m->n_plans, profile, err);
    if (rc) {
        nn_session_free(s);
        return rc;
    }
    *ret_session = s;
    return XR_OK;
}

nn_session *nn_session_free(nn_session *s)
{
    if (!s)
        return NULL;
    if (s->lane) {
        profile_print(s);
        for (int i = 0; i < session_lanes(s->m); i++)
            lane_done(s->m, &s->lane[i]);
    }
    free(s->lane);
    free(s);
    return NULL;
}

/* k samples (k <= pl->batch) from sample `first` of the caller's buffers through plan p on a
 * lane; samples past k are zero padding (they never mix with the real ones: check_batch). */
static xr_code run_plan(const nn_model *m, nn_lane *ln, int p, uint32_t first, uint32_t k,
                        const void *const *inputs, void *const *outputs, xr_error *err)
{
    const nn_plan *pl = &m->plan[p];
    const nn_graph *g = &pl->g;
    nn_exec x = {.arena = ln->arena, .stream = ln->stream, .mems = ln->mems[p],
                 .scratch = ln->scratch};
    for (size_t i = 0; i < g->n_inputs; i++) {
        const nn_value *v = &g->values[g->inputs[i]];
        size_t sb = m->in_info[i].sample_bytes;
        memcpy(ln->arena + v->offset, (const uint8_t *)inputs[i] + first * sb, k * sb);
        if (k * sb < v->n_bytes)
            memset(ln->arena + v->offset + k * sb, 0, v->n_bytes - k * sb);
    }
    double *prof = ln->prof_ns[p], t0 = prof ? mono_ns() : 0;
    for (size_t st = 0; st < pl->n_steps; st++) {
        const nn_node *n = &g->nodes[pl->steps[st]];
        xr_code rc;
        x.step = st;
        if (n->n_pre && (rc = nn_pre_run(g, n, &x, err)))
            return rc;
        if (n->prim)
            rc = nn_dnnl_run(g, n, &x, err);
        else if (n->op->view && g->values[n->out[0]].view_of >= 0)
            rc = XR_OK;
        else
            rc = n->op->run(g, n, &x, err);
        if (rc)
            return rc;
        if (prof) {
            double t1 = mono_ns();
            prof[st] += t1 - t0;
            t0 = t1;
        }
    }
    if (prof)
        ln->prof_runs[p]++;
    for (size_t i = 0; i < g->n_outputs; i++) {
        size_t sb = m->out_info[i].sample_bytes;
        memcpy((uint8_t *)outputs[i] + first * sb, nn_ptr(g, &x, g->outputs[i]), k * sb);
    }
    return XR_OK;
}

/* Lane work item i of a side-by-side run over samples [0, n): sample i through the batch-1
 * plan, or with lane_chunks the i-th of n_threads near-equal chunks through the chunk plan
 * (padded when that costs less than one batch-1 run per sample, NN_PAD_NUM/NN_PAD_DEN). */
static xr_code run_item(const nn_session *s, nn_lane *ln, uint32_t i, uint32_t n,
                        const void *const *inputs, void *const *outputs, xr_error *err)
{
    const nn_model *m = s->m;
    if (!m->lane_chunks)
        return run_plan(m, ln, 0, i, 1, inputs, outputs, err);
    uint32_t t = (uint32_t)m->n_threads, first = (uint32_t)((uint64_t)n * i / t),
             k = (uint32_t)((uint64_t)n * (i + 1) / t) - first, chunk = m->plan[1].batch;
    if (k && (uint64_t)k * NN_PAD_DEN >= (uint64_t)chunk * NN_PAD_NUM)
        return run_plan(m, ln, 1, first, k, inputs, outputs, err);
    xr_code rc = XR_OK;
    for (uint32_t j = 0; j < k && !rc; j++)
        rc = run_plan(m, ln, 0, first + j, 1, inputs, outputs, err);
    return rc;
}

/*
 * Samples [0, n) side by side, each thread on its own lane. Inside this parallel region
 * oneDNN runs every primitive on the calling thread alone, so there is no barrier between
 * steps; one sample at a time, a thread that finishes takes the next sample, and a CPU slowed
 * by another process delays only the samples it holds. (Splitting each primitive over the
 * threads instead makes every step wait for the slowest thread.) Chunks (product-heavy
 * models) are one per thread: their plan's taller products pay oneDNN's per-call weight
 * packing once per chunk.
 */
static xr_code run_side_by_side(nn_session *s, uint32_t n, const void *const *inputs,
                                void *const *outputs, xr_error *err)
{
    xr_code rc = XR_OK;
    int failed = 0;
    uint32_t items = s->m->lane_chunks ? (uint32_t)s->m->n_threads : n;
#pragma omp parallel num_threads(s->m->n_threads)
    {
        nn_lane *ln = &s->lane[omp_get_thread_num()];
        xr_error e = XR_ERROR_INIT;
#pragma omp for schedule(dynamic, 1)
        for (uint32_t i = 0; i < items; i++) {
            int stop;
#pragma omp atomic read
            stop = failed;
            if (stop)
                continue;
            xr_code r = run_item(s, ln, i, n, inputs, outputs, &e);
            if (r) {
#pragma omp critical(nn_side_by_side_error)
                if (!rc) {
                    rc = r;
                    if (err)
                        *err = e;
                }
#pragma omp atomic write
                failed = 1;
            }
        }
    }
    return rc;
}

xr_code nn_session_run(nn_session *s, uint32_t n_batch, const void *const *inputs,
                       void *const *outputs, xr_error *err)
{
    if (!s || !inputs || !outputs)
        return xr_error_set(err, XR_E_INPUT, "nn_session_run: NULL argument");
    const nn_model *m = s->m;
    const nn_graph *g = &m->plan[0].g;
    if (n_batch < 1 || n_batch > m->max_batch)
        return xr_error_set(err, XR_E_INPUT, "batch of %u is outside [1, %u]", n_batch,
                            m->max_batch);
    for (size_t i = 0; i < g->n_inputs; i++)
        if (!inputs[i])
            return xr_error_set(err, XR_E_INPUT, "input %zu is NULL", i);
    for (size_t i = 0; i < g->n_outputs; i++)
        if (!outputs[i])
            return xr_error_set(err, XR_E_INPUT, "output %zu is NULL", i);
    omp_set_num_threads(m->n_threads);
    xr_code rc;
    uint32_t done = 0, lanes = (uint32_t)session_lanes(m);
    if (lanes > 1 && n_batch >= lanes) {
        done = m->lane_chunks ? n_batch : n_batch - n_batch % lanes;
        if ((rc = run_side_by_side(s, done, inputs, outputs, err)))
            return rc;
    }
    /* what is left: the batch plan, padded, when it costs less than that many batch-1 runs
     * (NN_PAD_NUM/NN_PAD_DEN in nn-internal.h), else one sample at a time; a chunk plan is
     * for lanes only */
    uint32_t bmax = m->n_plans > 1 ? m->plan[1].batch : 1;
    while (done < n_batch) {
        uint32_t r = n_batch - done;
        if (m->n_plans > 1 && !m->lane_chunks &&
            (uint64_t)r * NN_PAD_DEN >= (uint64_t)bmax * NN_PAD_NUM) {
            uint32_t k = r < bmax ? r : bmax;
            rc = run_plan(m, &s->lane[0], 1, done, k, inputs, outputs, err);
            done += k;
        } else {
            rc = run_plan(m, &s->lane[0], 0, done, 1, inputs, outputs, err);
            done++;
        }
        if (rc)
            return rc;
    }
    return XR_OK;
}
