/*
 * PNG (libpng) and JPEG (libjpeg-turbo) into planar float images, converted as PIL 9.4 +
 * torchvision ToTensor do (see nn-image.h for the exact rules).
 *
 * Both libraries report errors by longjmp; everything that is allocated while a longjmp may
 * happen hangs off a context struct through volatile pointers, freed after the jump.
 */
#include <limits.h>
#include <png.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h> /* after stdio.h, which it needs */
#include <jerror.h>

#include "xr-fs.h"
#include "xr-limits.h"
#include "nn-image.h"

nn_image_params nn_image_params_default(void)
{
    return (nn_image_params){
        .max_width = XR_IMAGE_DIM_DEFAULT,
        .max_height = XR_IMAGE_DIM_DEFAULT,
        .max_decoded_bytes = XR_IMAGE_DECODED_BYTES_DEFAULT,
        .max_file_bytes = XR_IMAGE_FILE_BYTES_DEFAULT,
        .color = NN_IMAGE_NATIVE,
    };
}

const char *nn_image_format_name(nn_image_format f)
{
    switch (f) {
    case NN_IMAGE_FORMAT_PNG:
        return "png";
    case NN_IMAGE_FORMAT_JPEG:
        return "jpeg";
    default:
        return "unknown";
    }
}

const char *nn_image_color_name(nn_image_color c)
{
    switch (c) {
    case NN_IMAGE_NATIVE:
        return "native";
    case NN_IMAGE_GRAY:
        return "gray";
    default:
        return "invalid";
    }
}

nn_image_format nn_image_format_detect(const void *buf, size_t n_bytes)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t *b = buf;
    if (n_bytes >= 8 && memcmp(b, png_sig, 8) == 0)
        return NN_IMAGE_FORMAT_PNG;
    if (n_bytes >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        return NN_IMAGE_FORMAT_JPEG;
    return NN_IMAGE_FORMAT_UNKNOWN;
}

void nn_image_done(nn_image *img)
{
    if (!img)
        return;
    if (img->owned)
        free(img->data);
    *img = (nn_image){0};
}

/* ToTensor divides by 255 in float32; a table gives the same correctly rounded quotients. */
static float u8_to_float[256];
static pthread_once_t u8_once = PTHREAD_ONCE_INIT;

static void u8_table_init(void)
{
    for (int i = 0; i < 256; i++)
        u8_to_float[i] = (float)i / 255.0f;
}

/* PIL's convert("L"): ITU-R 601-2 luma in 16.16 fixed point, rounded (Convert.c L24). */
static inline uint8_t pil_luma(unsigned r, unsigned g, unsigned b)
{
    return (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

/* Check the declared size against params before any pixel buffer exists. */
static xr_code check_size(const char *what, uint64_t w, uint64_t h, uint32_t channels,
                          const nn_image_params *p, xr_error *err)
{
    if (w == 0 || h == 0)
        return xr_error_set(err, XR_E_INPUT, "invalid %s: image size is %llux%llu", what,
                            (unsigned long long)w, (unsigned long long)h);
    if (w > p->max_width || h > p->max_height || w > XR_IMAGE_DIM_MAX || h > XR_IMAGE_DIM_MAX)
        return xr_error_set(err, XR_E_LIMIT,
                            "%s image is %llux%llu pixels but must be at most %ux%u", what,
                            (unsigned long long)w, (unsigned long long)h,
                            p->max_width < XR_IMAGE_DIM_MAX ? p->max_width : XR_IMAGE_DIM_MAX,
                            p->max_height < XR_IMAGE_DIM_MAX ? p->max_height : XR_IMAGE_DIM_MAX);
    uint64_t bytes = w * h * channels * sizeof(float); /* < 2^32 * 2^4: no overflow */
    if (bytes > p->max_decoded_bytes || bytes > SIZE_MAX / 2)
        return xr_error_set(err, XR_E_LIMIT,
                            "%s image of %llux%llu pixels, %u channel(s) decodes to %llu bytes "
                            "but must be at most %llu",
                            what, (unsigned long long)w, (unsigned long long)h, channels,
                            (unsigned long long)bytes, (unsigned long long)p->max_decoded_bytes);
    return XR_OK;
}

/* ---------------------------------------------------------------------------------------------
 * PNG
 */
typedef struct png_ctx {
    const uint8_t *buf;
    size_t n, off;
    char msg[200];
    uint8_t *volatile bytes;     /* decoded rows */
    png_bytep *volatile rows;
    float *volatile data;
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof(c->msg), "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    /* Recoverable (bad ancillary chunk, extra data): PIL decodes such files too. */
    (void)png;
    (void)msg;
}

static void png_on_read(png_structp png, png_bytep out, size_t n)
{
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->n - c->off)
        png_error(png, "truncated file (unexpected end of data)");
    memcpy(out, c->buf + c->off, n);
    c->off += n;
}

static xr_code read_png(const uint8_t *buf, size_t n, const nn_image_params *p, nn_image *ret,
                        xr_error *err)
{
    png_ctx c = {.buf = buf, .n = n};
    xr_code rc = XR_OK;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, png_on_error,
                                             png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory creating a PNG reader");
        goto out;
    }
    if (setjmp(png_jmpbuf(png))) {
        rc = xr_error_set(err, XR_E_INPUT, "invalid PNG: %s", c.msg);
        goto out;
    }
    /* Our own limits are checked after IHDR, with a clear XR_E_LIMIT; libpng's would only say
     * "invalid IHDR". Ancillary chunks (iCCP, text) stay bounded by libpng's chunk limit. */
    png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
    png_set_chunk_malloc_max(png, 8u << 20);
    png_set_read_fn(png, &c, png_on_read);
    png_read_info(png, info);

    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    bool gray_src = (ctype & PNG_COLOR_MASK_COLOR) == 0;
    bool gray16 = ctype == PNG_COLOR_TYPE_GRAY && depth == 16; /* PIL mode "I" */
    uint32_t channels = gray_src || p->color == NN_IMAGE_GRAY ? 1 : 3;
    if ((rc = check_size("PNG", w, h, channels, p, err)))
        goto out;

    if (ctype == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(png);
    if (gray_src && depth < 8)
        png_set_expand_gray_1_2_4_to_8(png); /* x255, x85, x17 like PIL's "1", "L;2", "L;4" */
    if (depth == 16 && !gray16)
        png_set_strip_16(png); /* keeps the high byte, as PIL's "RGB;16B" / "LA;16B" */
    png_set_strip_alpha(png);
    (void)png_set_interlace_handling(png);
    png_read_update_info(png, info);
    uint32_t src_ch = png_get_channels(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    if (src_ch != (gray_src ? 1u : 3u) || rowbytes != (size_t)w * src_ch * (gray16 ? 2 : 1)) {
        rc = xr_error_set(err, XR_E_INTERNAL, "PNG transform gave %u channels, %zu bytes a row",
                          src_ch, rowbytes);
        goto out;
    }
    c.bytes = malloc(rowbytes * h);
    c.rows = malloc(sizeof(png_bytep) * h);
    c.data = malloc((size_t)w * h * channels * sizeof(float));
    if (!c.bytes || !c.rows || !c.data) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory decoding a %ux%u PNG", (unsigned)w,
                          (unsigned)h);
        goto out;
    }
    for (png_uint_32 y = 0; y < h; y++)
        c.rows[y] = c.bytes + (size_t)y * rowbytes;
    png_read_image(png, c.rows);

    size_t plane = (size_t)w * h;
    float *d = c.data;
    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *r = c.rows[y];
        float *o = d + (size_t)y * w;
        if (gray16) {
            for (png_uint_32 x = 0; x < w; x++)
                o[x] = (float)((r[2 * x] << 8) | r[2 * x + 1]) / 65535.0f;
        } else if (src_ch == 1) {
            for (png_uint_32 x = 0; x < w; x++)
                o[x] = u8_to_float[r[x]];
        } else if (channels == 1) {
            for (png_uint_32 x = 0; x < w; x++)
                o[x] = u8_to_float[pil_luma(r[3 * x], r[3 * x + 1], r[3 * x + 2])];
        } else {
            for (png_uint_32 x = 0; x < w; x++) {
                o[x] = u8_to_float[r[3 * x]];
                o[plane + x] = u8_to_float[r[3 * x + 1]];
                o[2 * plane + x] = u8_to_float[r[3 * x + 2]];
            }
        }
    }
    *ret = (nn_image){.width = w, .height = h, .channels = channels, .data = c.data,
                      .owned = true};
    c.data = NULL;
out:
    png_destroy_read_struct(png ? &png : NULL, info ? &info : NULL, NULL);
    free(c.bytes);
    free(c.rows);
    free(c.data);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * JPEG
 */
typedef struct jpeg_ctx {
    struct jpeg_error_mgr pub; /* first: libjpeg hands us &pub */
    struct jpeg_progress_mgr progress;
    jmp_buf jb;
    xr_code code;
    char msg[JMSG_LENGTH_MAX + 64];
    uint8_t *volatile row;
    float *volatile data;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo)
{
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    char m[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, m);
    c->code = c->pub.msg_code == JERR_BAD_PRECISION ? XR_E_UNSUPPORTED : XR_E_INPUT;
    snprintf(c->msg, sizeof(c->msg), "%s", m);
    longjmp(c->jb, 1);
}

static void jpeg_on_message(j_common_ptr cinfo, int level)
{
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    /* A premature end is what PIL reports as "image file is truncated"; libjpeg would go on
     * with gray filler. Other corrupt-data warnings PIL ignores, and so do we. */
    if (level == -1 && c->pub.msg_code == JWRN_JPEG_EOF) {
        c->code = XR_E_INPUT;
        snprintf(c->msg, sizeof(c->msg), "truncated file (premature end of JPEG data)");
        longjmp(c->jb, 1);
    }
}

static void jpeg_on_progress(j_common_ptr cinfo)
{
    jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
    if (cinfo->is_decompressor) {
        j_decompress_ptr d = (j_decompress_ptr)cinfo;
        if (d->input_scan_number > XR_JPEG_MAX_SCANS) {
            c->code = XR_E_LIMIT;
            snprintf(c->msg, sizeof(c->msg), "more than %d progressive scans",
                     XR_JPEG_MAX_SCANS);
            longjmp(c->jb, 1);
        }
    }
}

static xr_code read_jpeg(const uint8_t *buf, size_t n, const nn_image_params *p, nn_image *ret,
                         xr_error *err)
{
    struct jpeg_decompress_struct cinfo;
    jpeg_ctx c = {0};
    xr_code rc = XR_OK;
    cinfo.err = jpeg_std_error(&c.pub);
    c.pub.error_exit = jpeg_on_error;
    c.pub.emit_message = jpeg_on_message;
    if (setjmp(c.jb)) {
        rc = c.code;
        if (rc == XR_E_LIMIT)
            xr_error_set(err, rc, "JPEG has %s", c.msg);
        else if (rc == XR_E_UNSUPPORTED)
            xr_error_set(err, rc, "unsupported JPEG: %s", c.msg);
        else
            xr_error_set(err, XR_E_INPUT, "invalid JPEG: %s", c.msg);
        goto out;
    }
    jpeg_create_decompress(&cinfo);
    c.progress.progress_monitor = jpeg_on_progress;
    cinfo.progress = &c.progress;
    if (n > ULONG_MAX) {
        rc = xr_error_set(err, XR_E_LIMIT, "JPEG of %zu bytes is too large", n);
        goto out;
    }
    jpeg_mem_src(&cinfo, buf, (unsigned long)n);
    (void)jpeg_read_header(&cinfo, TRUE);

    bool gray_src;
    switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
        gray_src = true;
        break;
    case JCS_YCbCr:
    case JCS_RGB:
        gray_src = false;
        break;
    default:
        rc = xr_error_set(err, XR_E_UNSUPPORTED,
                          "unsupported JPEG: colour space %d with %d components (only gray, "
                          "YCbCr and RGB are decoded)",
                          (int)cinfo.jpeg_color_space, cinfo.num_components);
        goto out;
    }
    uint32_t channels = gray_src || p->color == NN_IMAGE_GRAY ? 1 : 3;
    if ((rc = check_size("JPEG", cinfo.image_width, cinfo.image_height, channels, p, err)))
        goto out;
    /* PIL's settings: full size, islow DCT, fancy upsampling (libjpeg's defaults). */
    cinfo.out_color_space = gray_src ? JCS_GRAYSCALE : JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    cinfo.scale_num = cinfo.scale_denom = 1;
    (void)jpeg_start_decompress(&cinfo);
    uint32_t w = cinfo.output_width, h = cinfo.output_height;
    uint32_t src_ch = (uint32_t)cinfo.output_components;
    if (src_ch != (gray_src ? 1u : 3u)) {
        rc = xr_error_set(err, XR_E_INTERNAL, "JPEG decoder gave %u components", src_ch);
        goto out;
    }
    c.row = malloc((size_t)w * src_ch);
    c.data = malloc((size_t)w * h * channels * sizeof(float));
    if (!c.row || !c.data) {
        rc = xr_error_set(err, XR_E_NOMEM, "out of memory decoding a %ux%u JPEG", w, h);
        goto out;
    }
    size_t plane = (size_t)w * h;
    while (cinfo.output_scanline < h) {
        uint32_t y = cinfo.output_scanline;
        JSAMPROW rowp = c.row;
        if (jpeg_read_scanlines(&cinfo, &rowp, 1) != 1) {
            rc = xr_error_set(err, XR_E_INPUT, "invalid JPEG: no data for row %u", y);
            goto out;
        }
        const uint8_t *r = c.row;
        float *o = c.data + (size_t)y * w;
        if (src_ch == 1) {
            for (uint32_t x = 0; x < w; x++)
                o[x] = u8_to_float[r[x]];
        } else if (channels == 1) {
            for (uint32_t x = 0; x < w; x++)
                o[x] = u8_to_float[pil_luma(r[3 * x], r[3 * x + 1], r[3 * x + 2])];
        } else {
            for (uint32_t x = 0; x < w; x++) {
                o[x] = u8_to_float[r[3 * x]];
                o[plane + x] = u8_to_float[r[3 * x + 1]];
                o[2 * plane + x] = u8_to_float[r[3 * x + 2]];
            }
        }
    }
    /* No jpeg_finish_decompress: every row is in; trailing bytes (or a missing EOI) do not
     * change the image, and PIL accepts them too. */
    *ret = (nn_image){.width = w, .height = h, .channels = channels, .data = c.data,
                      .owned = true};
    c.data = NULL;
out:
    jpeg_destroy_decompress(&cinfo);
    free(c.row);
    free(c.data);
    return rc;
}

xr_code nn_image_read_buffer(const void *buf, size_t n_bytes, const nn_image_params *params,
                             nn_image *ret, xr_error *err)
{
    if (!ret || (!buf && n_bytes))
        return xr_error_set(err, XR_E_INTERNAL, "nn_image_read_buffer: invalid arguments");
    *ret = (nn_image){0};
    nn_image_params def = nn_image_params_default();
    const nn_image_params *p = params ? params : &def;
    if ((unsigned)p->color >= NN_IMAGE_COLOR_MAX)
        return xr_error_set(err, XR_E_INTERNAL, "invalid colour mode %d", (int)p->color);
    pthread_once(&u8_once, u8_table_init);
    switch (nn_image_format_detect(buf, n_bytes)) {
    case NN_IMAGE_FORMAT_PNG:
        return read_png(buf, n_bytes, p, ret, err);
    case NN_IMAGE_FORMAT_JPEG:
        return read_jpeg(buf, n_bytes, p, ret, err);
    default:
        if (n_bytes == 0)
            return xr_error_set(err, XR_E_INPUT, "not a PNG or JPEG file: it is empty");
        return xr_error_set(err, XR_E_INPUT,
                            "not a PNG or JPEG file (no PNG or JPEG signature in the first bytes)");
    }
}

xr_code nn_image_read_file(const char *path, const nn_image_params *params, nn_image *ret,
                           xr_error *err)
{
    nn_image_params def = nn_image_params_default();
    const nn_image_params *p = params ? params : &def;
    char *data = NULL;
    size_t n = 0;
    if (ret)
        *ret = (nn_image){0};
    xr_code rc = xr_fs_read_all(path, p->max_file_bytes, &data, &n, err);
    if (rc == XR_OK)
        rc = nn_image_read_buffer(data, n, p, ret, err);
    free(data);
    if (rc)
        xr_error_prefix(err, "reading \"%s\": ", path);
    return rc;
}
