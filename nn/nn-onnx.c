/*
 * ONNX reading: protobuf-c over Debian's onnx.proto does the framing (it rejects truncated or
 * malformed messages and never reads past the buffer); this file validates the meaning: types,
 * shapes, tensor data sizes, external data locations, names, topological order, ops and opsets.
 * Why protobuf-c rather than a hand-written reader: the schema is large and evolves, the
 * generated unpacker is bounds-checked and fuzzed upstream, and Debian ships both pieces.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nn-internal.h"

static xr_code tensor_shape(const Onnx__TensorProto *t, nn_value *v, const char *what,
                            xr_error *err)
{
    if (!t->has_data_type || t->data_type <= 0 || t->data_type >= NN_DTYPE_MAX)
        return xr_error_set(err, XR_E_INPUT, "%s \"%s\": unrecognized data type %d", what,
                            v->name, (int)t->data_type);
    nn_dtype dt = (nn_dtype)t->data_type;
    if (nn_elem_size(dt) == 0 || dt == NN_DTYPE_FLOAT16)
        return xr_error_set(err, XR_E_UNSUPPORTED, "%s \"%s\": data type %s is not supported",
                            what, v->name, nn_dtype_name(dt));
    if (t->n_dims > NN_MAX_RANK)
        return xr_error_set(err, XR_E_UNSUPPORTED, "%s \"%s\": rank %zu, at most %d supported",
                            what, v->name, t->n_dims, NN_MAX_RANK);
    if (t->segment)
        return xr_error_set(err, XR_E_UNSUPPORTED, "%s \"%s\": segmented tensors are not supported",
                            what, v->name);
    return nn_value_shape(v, dt, (int)t->n_dims, t->dims, err);
}

/* "a/b.bin": relative, no "..", no empty component; the file must resolve inside base_dir. */
static xr_code external_read(const Onnx__TensorProto *t, const char *base_dir, nn_value *v,
                             const char *what, void *dst, xr_error *err)
{
    const char *loc = NULL;
    int64_t offset = 0, length = -1;
    for (size_t i = 0; i < t->n_external_data; i++) {
        const Onnx__StringStringEntryProto *e = t->external_data[i];
        if (!e->key || !e->value)
            continue;
        char *end;
        if (strcmp(e->key, "location") == 0) {
            loc = e->value;
        } else if (strcmp(e->key, "offset") == 0 || strcmp(e->key, "length") == 0) {
            errno = 0;
            long long val = strtoll(e->value, &end, 10);
            if (errno || *end || end == e->value || val < 0)
                return xr_error_set(err, XR_E_INPUT, "%s \"%s\": invalid external data %s \"%s\"",
                                    what, v->name, e->key, e->value);
            *(strcmp(e->key, "offset") == 0 ? &offset : &length) = val;
        }
    }
    if (!base_dir)
        return xr_error_set(err, XR_E_INPUT,
                            "%s \"%s\": external data cannot be used when loading from a buffer",
                            what, v->name);
    if (!loc || !loc[0])
        return xr_error_set(err, XR_E_INPUT, "%s \"%s\": external data without a location", what,
                            v->name);
    if (loc[0] == '/' || strstr(loc, "..") || strlen(loc) >= PATH_MAX / 2)
        return xr_error_set(err, XR_E_INPUT,
                            "%s \"%s\": external data location \"%s\" escapes the model's folder",
                            what, v->name, loc);
    if (length >= 0 && (uint64_t)length != v->n_bytes)
        return xr_error_set(err, XR_E_INPUT,
                            "%s \"%s\": external data length %lld, expected %zu bytes", what,
                            v->name, (long long)length, v->n_bytes);
    char path[PATH_MAX], real[PATH_MAX], realbase[PATH_MAX];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", base_dir, loc) >= sizeof(path))
        return xr_error_set(err, XR_E_INPUT, "%s \"%s\": external data path too long", what,
                            v->name);
    if (!realpath(base_dir, realbase) || !realpath(path, real))
        return xr_error_errno(err, errno, "%s \"%s\": cannot open external data \"%s\"", what,
                              v->name, loc);
    size_t bl = strlen(realbase);
    if (strncmp(real, realbase, bl) != 0 || (real[bl] != '/' && strcmp(realbase, "/") != 0))
        return xr_error_set(err, XR_E_INPUT,
                            "%s \"%s\": external data location \"%s\" escapes the model's folder",
                            what, v->name, loc);
    int fd = open(real, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return xr_error_errno(err, errno, "%s \"%s\": cannot open external data \"%s\"", what,
                              v->name, loc);
    struct stat st;
    xr_code rc = XR_OK;
    if (fstat(fd, &st) < 0) {
        rc = xr_error_errno(err, errno, "cannot stat \"%s\"", loc);
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)offset > (uint64_t)st.st_size ||
        v->n_bytes > (uint64_t)st.st_size - (uint64_t)offset) {
        rc = xr_error_set(err, XR_E_INPUT,
                          "%s \"%s\": external data [%lld, +%zu) lies outside \"%s\" (%lld bytes)",
                          what, v->name, (long long)offset, v->n_bytes, loc,
                          (long long)st.st_size);
        goto out;
    }
    size_t done = 0;
    while (done < v->n_bytes) {
        ssize_t r = pread(fd, (char *)dst + done, v->n_bytes - done, offset + (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r < 0 ? xr_error_errno(err, errno, "reading \"%s\"", loc)
                       : xr_error_set(err, XR_E_INPUT, "\"%s\" ended early", loc);
            goto out;
        }
        done += (size_t)r;
    }
out:
    close(fd);
    return rc;
}

xr_code nn_tensor_load(const Onnx__TensorProto *t, const char *base_dir, nn_value *v,
                       const char *what, xr_error *err)
{
    xr_code rc = tensor_shape(t, v, what, err);
    if (rc)
        return rc;
    void *dst = nn_aligned_alloc(v->n_bytes);
    if (!dst)
        return xr_error_set(err, XR_E_NOMEM, "%s \"%s\": out of memory for %zu bytes", what,
                            v->name, v->n_bytes);
    size_t n = (size_t)v->n_elems;
    nn_dtype dt = v->dtype;
    if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        rc = external_read(t, base_dir, v, what, dst, err);
    } else if (t->has_raw_data) {
        if (t->raw_data.len != v->n_bytes)
            rc = xr_error_set(err, XR_E_INPUT, "%s \"%s\": raw data has %zu bytes, shape needs %zu",
                              what, v->name, t->raw_data.len, v->n_bytes);
        else if (n)
            memcpy(dst, t->raw_data.data, v->n_bytes);
    } else {
        size_t have = 0;
        switch (dt) {
        case NN_DTYPE_FLOAT:
            have = t->n_float_data;
            if (have == n)
                memcpy(dst, t->float_data, n * 4);
            break;
        case NN_DTYPE_DOUBLE:
            have = t->n_double_data;
            if (have == n)
                memcpy(dst, t->double_data, n * 8);
            break;
        case NN_DTYPE_INT64:
            have = t->n_int64_data;
            if (have == n)
                memcpy(dst, t->int64_data, n * 8);
            break;
        case NN_DTYPE_UINT64: case NN_DTYPE_UINT32:
            have = t->n_uint64_data;
            for (size_t i = 0; have == n && i < n; i++)
                if (dt == NN_DTYPE_UINT64)
                    ((uint64_t *)dst)[i] = t->uint64_data[i];
                else
                    ((uint32_t *)dst)[i] = (uint32_t)t->uint64_data[i];
            break;
        default: /* int32, int16, int8, uint16, uint8, bool travel in int32_data */
            have = t->n_int32_data;
            for (size_t i = 0; have == n && i < n; i++) {
                int32_t x = t->int32_data[i];
                switch (nn_elem_size(dt)) {
                case 4: ((int32_t *)dst)[i] = x; break;
                case 2: ((int16_t *)dst)[i] = (int16_t)x; break;
                default: ((uint8_t *)dst)[i] = (uint8_t)x; break;
                }
            }
            break;
        }
        if (have != n)
            rc = xr_error_set(err, XR_E_INPUT, "%s \"%s\": %zu values stored, shape needs %zu",
                              what, v->name, have, n);
    }
    if (rc) {
        free(dst);
        return rc;
    }
    free(v->data);
    v->data = dst;
    return XR_OK;
}
