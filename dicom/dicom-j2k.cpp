/*
 * JPEG 2000 (PS3.5 A.4.4, lossless and lossy) through OpenJPEG, which DCMTK 3.6.7's free codecs
 * lack. One codestream (or JP2 file) in memory -> 32-bit samples, color by pixel.
 *
 * OpenJPEG applies the inverse multi-component transform itself when the codestream's COD
 * marker says one was used, so YBR_RCT/YBR_ICT objects come out as RGB. The image size read
 * from the codestream header is checked against Rows/Columns before OpenJPEG allocates the
 * decoded components, so a hostile header cannot make it allocate more than the caller's
 * limits allowed.
 */
#include <string.h>

#include <openjpeg.h>

#include "dicom-internal.hpp"

namespace
{

struct MemStream {
    const uint8_t *data;
    size_t n;
    size_t pos;
};

OPJ_SIZE_T mem_read(void *buf, OPJ_SIZE_T n, void *user)
{
    MemStream *m = static_cast<MemStream *>(user);
    if (m->pos >= m->n)
        return (OPJ_SIZE_T)-1; /* OpenJPEG's end-of-stream */
    size_t k = m->n - m->pos < n ? m->n - m->pos : n;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return k;
}

OPJ_OFF_T mem_skip(OPJ_OFF_T n, void *user)
{
    MemStream *m = static_cast<MemStream *>(user);
    if (n < 0) {
        if ((size_t)(-n) > m->pos)
            return -1;
        m->pos -= (size_t)(-n);
        return n;
    }
    size_t left = m->n - m->pos;
    size_t k = (size_t)n > left ? left : (size_t)n;
    m->pos += k;
    return (OPJ_OFF_T)k;
}

OPJ_BOOL mem_seek(OPJ_OFF_T off, void *user)
{
    MemStream *m = static_cast<MemStream *>(user);
    if (off < 0 || (size_t)off > m->n)
        return OPJ_FALSE;
    m->pos = (size_t)off;
    return OPJ_TRUE;
}

/* Keeps OpenJPEG's first error for the message. */
void on_error(const char *msg, void *user)
{
    char *buf = static_cast<char *>(user);
    if (buf[0] == '\0') {
        snprintf(buf, 256, "%s", msg);
        size_t n = strlen(buf);
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
            buf[--n] = '\0';
    }
}

void on_quiet(const char *, void *)
{
}

/* RAII for the three OpenJPEG handles. */
struct Opj {
    opj_codec_t *codec = nullptr;
    opj_stream_t *stream = nullptr;
    opj_image_t *image = nullptr;
    ~Opj()
    {
        if (image)
            opj_image_destroy(image);
        if (stream)
            opj_stream_destroy(stream);
        if (codec)
            opj_destroy_codec(codec);
    }
};

} // namespace

namespace xrdicom
{

xr_code j2k_decode_frame(const uint8_t *data, size_t n, uint32_t rows, uint32_t columns,
                         uint16_t samples, int32_t *out, xr_error *err)
{
    static const uint8_t jp2_sig[12] = {0, 0, 0, 0x0c, 'j', 'P', ' ', ' ', 0x0d, 0x0a, 0x87, 0x0a};
    if (n < 12)
        return xr_error_set(err, XR_E_INPUT, "JPEG 2000 data of %zu bytes is too short", n);
    OPJ_CODEC_FORMAT fmt;
    if (memcmp(data, jp2_sig, sizeof(jp2_sig)) == 0)
        fmt = OPJ_CODEC_JP2;
    else if (data[0] == 0xff && data[1] == 0x4f && data[2] == 0xff && data[3] == 0x51)
        fmt = OPJ_CODEC_J2K;
    else
        return xr_error_set(err, XR_E_INPUT,
                            "JPEG 2000 data starts with %02x %02x %02x %02x, neither a "
                            "codestream (ff 4f ff 51) nor a JP2 file",
                            data[0], data[1], data[2], data[3]);

    char opj_msg[256] = "";
    MemStream ms = {data, n, 0};
    Opj o;
    o.codec = opj_create_decompress(fmt);
    o.stream = opj_stream_create(64 * 1024, OPJ_TRUE);
    if (!o.codec || !o.stream)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    opj_set_error_handler(o.codec, on_error, opj_msg);
    opj_set_warning_handler(o.codec, on_quiet, nullptr);
    opj_set_info_handler(o.codec, on_quiet, nullptr);
    opj_stream_set_user_data(o.stream, &ms, nullptr);
    opj_stream_set_user_data_length(o.stream, n);
    opj_stream_set_read_function(o.stream, mem_read);
    opj_stream_set_skip_function(o.stream, mem_skip);
    opj_stream_set_seek_function(o.stream, mem_seek);
    opj_dparameters_t params;
    opj_set_default_decoder_parameters(&params);
    if (!opj_setup_decoder(o.codec, &params))
        return xr_error_set(err, XR_E_INTERNAL, "cannot set up the JPEG 2000 decoder");
    if (!opj_read_header(o.stream, o.codec, &o.image) || !o.image)
        return xr_error_set(err, XR_E_INPUT, "cannot read the JPEG 2000 header: %s",
                            opj_msg[0] ? opj_msg : "corrupt codestream");

    /* Check the geometry before opj_decode allocates the components. */
    const opj_image_t *im = o.image;
    if (im->numcomps != samples)
        return xr_error_set(err, XR_E_INPUT,
                            "JPEG 2000 data has %u components but Samples per Pixel is %u",
                            (unsigned)im->numcomps, (unsigned)samples);
    const uint32_t w = im->x1 - im->x0, h = im->y1 - im->y0;
    if (im->x1 < im->x0 || im->y1 < im->y0 || w != columns || h != rows)
        return xr_error_set(err, XR_E_INPUT,
                            "JPEG 2000 image is %u x %u pixels but Rows x Columns is %u x %u",
                            (unsigned)h, (unsigned)w, (unsigned)rows, (unsigned)columns);
    for (unsigned c = 0; c < im->numcomps; c++) {
        if (im->comps[c].dx != 1 || im->comps[c].dy != 1)
            return xr_error_set(err, XR_E_UNSUPPORTED,
                                "JPEG 2000 component %u is subsampled (%u x %u), which is not "
                                "supported",
                                c, (unsigned)im->comps[c].dx, (unsigned)im->comps[c].dy);
        if (im->comps[c].prec < 1 || im->comps[c].prec > 16)
            return xr_error_set(err, XR_E_UNSUPPORTED,
                                "JPEG 2000 component %u has %u bits, not 1 to 16", c,
                                (unsigned)im->comps[c].prec);
    }
    if (!opj_decode(o.codec, o.stream, o.image) || !opj_end_decompress(o.codec, o.stream))
        return xr_error_set(err, XR_E_INPUT, "cannot decode the JPEG 2000 data: %s",
                            opj_msg[0] ? opj_msg : "corrupt codestream");
    const size_t n_px = (size_t)rows * columns;
    for (unsigned c = 0; c < im->numcomps; c++) {
        const opj_image_comp_t *comp = &im->comps[c];
        if (!comp->data || comp->w != columns || comp->h != rows)
            return xr_error_set(err, XR_E_INPUT,
                                "JPEG 2000 component %u decoded to %u x %u, not %u x %u", c,
                                (unsigned)comp->h, (unsigned)comp->w, (unsigned)rows,
                                (unsigned)columns);
        const OPJ_INT32 *src = comp->data;
        int32_t *dst = out + c;
        for (size_t i = 0; i < n_px; i++, dst += samples)
            *dst = src[i];
    }
    return XR_OK;
}

} // namespace xrdicom
