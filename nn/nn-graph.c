/*
 * Graph construction: values and nodes from a ModelProto, validated in file order (ONNX
 * requires topological order), shape-inferred, constant-folded, then pruned to what the
 * outputs need.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn-internal.h"

typedef struct name_map {
    int *slots;
    size_t cap;
} name_map;

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

static int map_find(const name_map *m, const nn_graph *g, const char *name)
{
    for (size_t i = hash_str(name) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        int v = m->slots[i];
        if (v < 0)
            return -1;
        if (strcmp(g->values[v].name, name) == 0)
            return v;
    }
}

static void map_put(name_map *m, const nn_graph *g, int v)
{
    size_t i = hash_str(g->values[v].name) & (m->cap - 1);
    while (m->slots[i] >= 0)
        i = (i + 1) & (m->cap - 1);
    m->slots[i] = v;
}

/* New value named name; -1 with err on a duplicate or out of memory. */
static int value_add(nn_graph *g, name_map *m, const char *name, const char *what, xr_error *err)
{
    if (!name || !name[0]) {
        xr_error_set(err, XR_E_INPUT, "%s without a name", what);
        return -1;
    }
    if (map_find(m, g, name) >= 0) {
        xr_error_set(err, XR_E_INPUT, "%s \"%s\" is defined twice", what, name);
        return -1;
    }
    if (g->n_values >= g->cap_values) {
        xr_error_set(err, XR_E_LIMIT, "more than %zu tensors", g->cap_values);
        return -1;
    }
    nn_value *v = &g->values[g->n_values];
    memset(v, 0, sizeof(*v));
    v->producer = -1;
    v->view_of = -1;
    if (!(v->name = strdup(name))) {
        xr_error_set(err, XR_E_NOMEM, "out of memory");
        return -1;
    }
    map_put(m, g, (int)g->n_values);
    return (int)g->n_values++;
}

static xr_code value_info(nn_graph *g, int v, const Onnx__ValueInfoProto *vi, int64_t batch,
                          bool *ret_dynamic, const char *what, xr_error *err)
{
    const Onnx__TypeProto *tp = vi->type;
    if (!tp || tp->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !tp->tensor_type)
        return xr_error_set(err, XR_E_UNSUPPORTED, "%s \"%s\" is not a tensor", what, vi->name);
    const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
    if (!tt->shape)
        return xr_error_set(err, XR_E_UNSUPPORTED, "%s \"%s\" has no shape", what, vi->name);
    if (tt->shape->n_dim > NN_MAX_RANK)
        return xr_error_set(err, XR_E_UNSUPPORTED, "%s \"%s\": rank %zu above %d", what,
                            vi->name, tt->shape->n_dim, NN_MAX_RANK);
    int64_t dims[NN_MAX_RANK];
    for (size_t i = 0; i < tt->shape->n_dim; i++) {
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
            if (d->dim_value < 0)
                return xr_error_set(err, XR_E_INPUT, "%s \"%s\": dimension %zu is %lld", what,
                                    vi->name, i, (long long)d->dim_value);
            dims[i] = d->dim_value;
        } else if (i == 0) {
            dims[i] = batch;
            *ret_dynamic = true;
        } else {
            return xr_error_set(err, XR_E_UNSUPPORTED,
                                "%s \"%s\": symbolic dimension \"%s\" at axis %zu (only the "
                                "batch axis 0 may be symbolic)",
                                what, vi->name,
                                d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM
                                    ? d->dim_param
                                    : "?",
                                i);
        }
    }
    int et = tt->has_elem_type ? tt->elem_type : 0;
    if (et <= 0 || et >= NN_DTYPE_MAX || nn_dtype_size((nn_dtype)et) == 0)
        return xr_error_set(err, XR_E_UNSUPPORTED, "%s \"%s\": element type %s (%d) is not supported",
                            what, vi->name, nn_dtype_name((nn_dtype)et), et);
    return nn_value_set(g, v, (nn_dtype)et, (int)tt->shape->n_dim, dims, err);
}

static xr_code fold(nn_graph *g, nn_node *n, xr_error *err)
{
    for (int o = 0; o < n->n_out; o++) {
        if (n->out[o] < 0)
            continue;
        nn_value *v = &g->values[n->out[o]];
        if (!(v->data = nn_aligned_alloc(v->n_bytes)))
            return xr_error_set(err, XR_E_NOMEM, "out of memory folding node \"%s\"", n->name);
    }
    nn_exec x = {0};
    xr_code rc = n->op->run(g, n, &x, err);
    n->dead = true;
    return rc;
}

void nn_graph_done(nn_graph *g)
{
    for (size_t i = 0; i < g->n_nodes; i++) {
        nn_node *n = &g->nodes[i];
        nn_node_dnnl_free(n);
        free(n->name);
        free(n->op_type);
        free(n->in);
        free(n->out);
        free(n->a.split);
    }
    for (size_t i = 0; i < g->n_values; i++) {
        free(g->values[i].name);
        if (!g->values[i].borrowed)
            free(g->values[i].data);
    }
    free(g->nodes);
    free(g->values);
    free(g->inputs);
    free(g->outputs);
    memset(g, 0, sizeof(*g));
}

static xr_code check_opset(const Onnx__ModelProto *mp, int64_t *ret, xr_error *err)
{
    int64_t opset = -1;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = mp->opset_import[i];
        if (!o->domain || !o->domain[0] || strcmp(o->domain, "ai.onnx") == 0)
            opset = o->has_version ? o->version : -1;
    }
    if (opset < 0)
        return xr_error_set(err, XR_E_INPUT, "the model imports no default-domain opset");
    if (opset < NN_OPSET_MIN || opset > NN_OPSET_MAX)
        return xr_error_set(err, XR_E_UNSUPPORTED, "opset %lld is not supported (%d to %d are)",
                            (long long)opset, NN_OPSET_MIN, NN_OPSET_MAX);
    *ret = opset;
    return XR_OK;
}

static xr_code bind_input(nn_graph *g, int v, const nn_binding *b, xr_error *err)
{
    nn_value *val = &g->values[v];
    if (b->dtype != val->dtype || b->rank != val->rank || (b->rank && !b->dims) || !b->data)
        return xr_error_set(err, XR_E_INPUT, "binding for input \"%s\" does not match its "
                            "declared type and rank (%s, %d)", val->name,
                            nn_dtype_name(val->dtype), val->rank);
    xr_code rc = nn_value_set(g, v, b->dtype, b->rank, b->dims, err);
    if (rc)
        return rc;
    if (!(val->data = nn_aligned_alloc(val->n_bytes)))
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    if (val->n_bytes)
        memcpy(val->data, b->data, val->n_bytes);
    return XR_OK;
}

xr_code nn_graph_build(const Onnx__ModelProto *mp, const char *base_dir, int64_t batch,
                       const nn_params *p, const nn_graph *share, nn_graph *g,
                       bool *ret_dynamic, xr_error *err)
{
    xr_code rc = XR_OK;
    name_map map = {0};
    const Onnx__GraphProto *gp = mp->graph;
    bool dynamic = false;
    memset(g, 0, sizeof(*g));
    g->batch = batch;
    if (!gp)
        return xr_error_set(err, XR_E_INPUT, "the model has no graph");
    if ((rc = check_opset(mp, &g->opset, err)))
        return rc;
    if (gp->n_node > NN_MAX_NODES)
        return xr_error_set(err, XR_E_LIMIT, "the graph has %zu nodes, at most %d", gp->n_node,
                            NN_MAX_NODES);
    size_t n_vals = gp->n_initializer + gp->n_input;
    for (size_t i = 0; i < gp->n_node; i++)
        n_vals += gp->node[i]->n_output;
    if (n_vals > NN_MAX_VALUES)
        return xr_error_set(err, XR_E_LIMIT, "the graph has %zu tensors, at most %d", n_vals,
                            NN_MAX_VALUES);
    g->cap_values = n_vals + 2 * gp->n_node + 16; /* room for values made by rewrites */
    map.cap = 16;
    while (map.cap < 2 * g->cap_values)
        map.cap *= 2;
    g->values = calloc(g->cap_values, sizeof(nn_value));
    g->nodes = calloc(gp->n_node + 1, sizeof(nn_node));
    map.slots = malloc(map.cap * sizeof(int));
    g->inputs = calloc(gp->n_input + 1, sizeof(int));
    g->outputs = calloc(gp->n_output + 1, sizeof(int));
    if (!g->values || !g->nodes || !map.slots || !g->inputs || !g->outputs) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto out;
    }
    memset(map.slots, 0xff, map.cap * sizeof(int));

    for (size_t i = 0; i < gp->n_initializer; i++) {
        const Onnx__TensorProto *t = gp->initializer[i];
        int v = value_add(g, &map, t->name, "initializer", err);
        if (v < 0) {
            rc = err ? err->code : XR_E_INPUT;
            goto out;
        }
        g->values[v].is_initializer = true;
        const nn_value *sv = share && (size_t)v < share->n_values ? &share->values[v] : NULL;
        if (sv && sv->is_initializer && sv->data && !strcmp(sv->name, g->values[v].name)) {
            /* validated when share was built: the same bytes, borrowed */
            nn_value *val = &g->values[v];
            val->dtype = sv->dtype;
            val->rank = sv->rank;
            memcpy(val->dims, sv->dims, sizeof(val->dims));
            val->n_elems = sv->n_elems;
            val->n_bytes = sv->n_bytes;
            val->known = sv->known;
            val->data = sv->data;
            val->borrowed = true;
            continue;
        }
        if ((rc = nn_tensor_load(t, base_dir, &g->values[v], "initializer", err)))
            goto out;
    }
    for (size_t i = 0; i < gp->n_input; i++) {
        const Onnx__ValueInfoProto *vi = gp->input[i];
        if (vi->name && map_find(&map, g, vi->name) >= 0)
            continue; /* an initializer with a declared input (IR < 4): stays constant */
        int v = value_add(g, &map, vi->name, "graph input", err);
        if (v < 0) {
            rc = err ? err->code : XR_E_INPUT;
            goto out;
        }
        const nn_binding *b = NULL;
        for (size_t k = 0; k < p->n_bindings; k++)
            if (p->bindings[k].name && strcmp(p->bindings[k].name, vi->name) == 0)
                b = &p->bindings[k];
        bool dyn = false;
        if ((rc = value_info(g, v, vi, batch, &dyn, "graph input", err)))
            goto out;
        if (b) {
            /* a bound input has its data's shape, symbolic or not */
            if ((rc = bind_input(g, v, b, err)))
                goto out;
            continue;
        }
        dynamic |= dyn;
        g->values[v].is_input = true;
        g->inputs[g->n_inputs++] = v;
    }

    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *np = gp->node[i];
        nn_node *n = &g->nodes[g->n_nodes++];
        char fallback[32];
        snprintf(fallback, sizeof(fallback), "#%zu", i);
        n->name = strdup(np->name && np->name[0] ? np->name : fallback);
        n->op_type = strdup(np->op_type ? np->op_type : "");
        n->in = calloc(np->n_input + 1, sizeof(int));
        n->out = calloc(np->n_output + 1, sizeof(int));
        n->sum_in = -1;
        n->bias_in = -1;
        n->proto = np;
        if (!n->name || !n->op_type || !n->in || !n->out) {
            rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
            goto out;
        }
        if (np->domain && np->domain[0] && strcmp(np->domain, "ai.onnx") != 0) {
            rc = xr_error_set(err, XR_E_UNSUPPORTED, "unsupported op \"%s\" of domain \"%s\" (node \"%s\")",
                              n->op_type, np->domain, n->name);
            goto out;
        }
        if (!(n->op = nn_op_find(n->op_type))) {
            rc = xr_error_set(err, XR_E_UNSUPPORTED, "unsupported op \"%s\" (node \"%s\", opset %lld)",
                              n->op_type, n->name, (long long)g->opset);
            goto out;
        }
        if ((int)np->n_input < n->op->min_in || (int)np->n_input > n->op->max_in ||
            (int)np->n_output < n->op->min_out || (int)np->n_output > n->op->max_out) {
            rc = xr_error_set(err, XR_E_INPUT,
                              "node \"%s\" (%s): %zu inputs and %zu outputs; expected %d-%d and %d-%d",
                              n->name, n->op_type, np->n_input, np->n_output, n->op->min_in,
                              n->op->max_in, n->op->min_out, n->op->max_out);
            goto out;
        }
        for (size_t k = 0; k < np->n_attribute; k++)
            if (np->attribute[k]->g || np->attribute[k]->n_graphs) {
                rc = xr_error_set(err, XR_E_UNSUPPORTED, "node \"%s\" (%s): subgraph attributes are not supported",
                                  n->name, n->op_type);
                goto out;
            }
        n->n_in = (int)np->n_input;
        n->n_out = (int)np->n_output;
        bool all_const = true;
        for (int k = 0; k < n->n_in; k++) {
            const char *nm = np->input[k];
            if (!nm || !nm[0]) {
                n->in[k] = -1;
                continue;
            }
            int v = map_find(&map, g, nm);
            if (v < 0) {
                rc = xr_error_set(err, XR_E_INPUT,
                                  "node \"%s\" (%s) reads \"%s\", which no earlier node, input or "
                                  "initializer defines",
                                  n->name, n->op_type, nm);
                goto out;
            }
            n->in[k] = v;
            if (!g->values[v].data)
                all_const = false;
        }
        if (n->op->min_in > 0 && n->in[0] < 0) {
            rc = xr_error_set(err, XR_E_INPUT, "node \"%s\" (%s): input 0 is empty", n->name,
                              n->op_type);
            goto out;
        }
        for (int k = 0; k < n->n_out; k++) {
            const char *nm = np->output[k];
            if (!nm || !nm[0]) {
                n->out[k] = -1;
                continue;
            }
            int v = value_add(g, &map, nm, "tensor", err);
            if (v < 0) {
                rc = err ? err->code : XR_E_INPUT;
                xr_error_prefix(err, "node \"%s\" (%s): ", n->name, n->op_type);
                goto out;
            }
            n->out[k] = v;
            g->values[v].producer = (int)(n - g->nodes);
        }
        if (n->out[0] < 0) {
            rc = xr_error_set(err, XR_E_INPUT, "node \"%s\" (%s): output 0 is empty", n->name,
                              n->op_type);
            goto out;
        }
        if ((rc = n->op->infer(g, n, err))) {
            if (err && !strstr(err->msg, n->name))
                xr_error_prefix(err, "node \"%s\" (%s): ", n->name, n->op_type);
            goto out;
        }
        if (strcmp(n->op_type, "Constant") == 0) {
            n->dead = true;
        } else if (n->op->run && (all_const || strcmp(n->op_type, "Shape") == 0)) {
            if ((rc = fold(g, n, err)))
                goto out;
        }
        n->proto = NULL;
    }

    for (size_t i = 0; i < gp->n_output; i++) {
        const Onnx__ValueInfoProto *vi = gp->output[i];
        int v = vi->name ? map_find(&map, g, vi->name) : -1;
        if (v < 0) {
            rc = xr_error_set(err, XR_E_INPUT, "graph output \"%s\" is not computed by any node",
                              vi->name ? vi->name : "");
            goto out;
        }
        nn_value *val = &g->values[v];
        if (val->is_output) {
            rc = xr_error_set(err, XR_E_INPUT, "graph output \"%s\" is listed twice", val->name);
            goto out;
        }
        /* declared type and fixed dimensions must agree with inference */
        const Onnx__TypeProto *tp = vi->type;
        if (tp && tp->value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE && tp->tensor_type) {
            const Onnx__TypeProto__Tensor *tt = tp->tensor_type;
            if (tt->has_elem_type && tt->elem_type != (int)val->dtype) {
                rc = xr_error_set(err, XR_E_INPUT, "graph output \"%s\" is declared %s but computes %s",
                                  val->name, nn_dtype_name((nn_dtype)tt->elem_type),
                                  nn_dtype_name(val->dtype));
                goto out;
            }
            if (tt->shape) {
                bool ok = (int)tt->shape->n_dim == val->rank;
                for (size_t d = 0; ok && d < tt->shape->n_dim; d++) {
                    const Onnx__TensorShapeProto__Dimension *dd = tt->shape->dim[d];
                    if (dd->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE &&
                        dd->dim_value != val->dims[d])
                        ok = false;
                }
                if (!ok) {
                    char buf[128] = "";
                    size_t at = 0;
                    for (int d = 0; d < val->rank && at < sizeof(buf) - 24; d++)
                        at += (size_t)snprintf(buf + at, sizeof(buf) - at, "%s%lld", d ? "," : "",
                                               (long long)val->dims[d]);
                    rc = xr_error_set(err, XR_E_INPUT,
                                      "graph output \"%s\" has a declared shape that differs from "
                                      "the inferred [%s]",
                                      val->name, buf);
                    goto out;
                }
            }
        }
        val->is_output = true;
        g->outputs[g->n_outputs++] = v;
    }
    if (g->n_outputs == 0) {
        rc = xr_error_set(err, XR_E_INPUT, "the graph has no output");
        goto out;
    }

    /* keep only the nodes the outputs need */
    bool *need = calloc(g->n_values + 1, 1);
    if (!need) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < g->n_outputs; i++)
        need[g->outputs[i]] = true;
    for (size_t i = g->n_nodes; i-- > 0;) {
        nn_node *n = &g->nodes[i];
        if (n->dead)
            continue;
        bool used = false;
        for (int k = 0; k < n->n_out; k++)
            used |= n->out[k] >= 0 && need[n->out[k]];
        if (!used) {
            n->dead = true;
            continue;
        }
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0)
                need[n->in[k]] = true;
    }
    free(need);
    *ret_dynamic = dynamic;
out:
    free(map.slots);
    if (rc)
        nn_graph_done(g);
    return rc;
}
