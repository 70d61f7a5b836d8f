/*
 * dicom_image_read*, dicom_raw_image_read: pixel decoding and the grayscale transform (the
 * contract is in dicom.h).
 *
 * DESIGN
 * - The object is parsed with DCMTK's default maximum read length, so Pixel Data (and every
 *   fragment over 4 KiB) stays on disk (or in the memfd for buffers) until a frame is read.
 *   Every attribute that sizes an allocation (Rows, Columns, Samples per Pixel, Bits
 *   Allocated, Number of Frames) is read and checked against the caller's limits first.
 * - Frames are decoded one at a time into a buffer we own: native data through
 *   DcmElement::getPartialValue (big endian swapped to local order by DCMTK), JPEG, JPEG-LS
 *   and RLE through DcmPixelData::getUncompressedFrame (the codecs dicom_global_init
 *   registered), JPEG 2000 through OpenJPEG (dicom-j2k.cpp) on the frame's fragments. We never
 *   call chooseRepresentation, which would decompress every frame of a multi-frame object.
 * - Every sample is then masked to Bits Stored (after shifting High Bit down) and
 *   sign-extended for Pixel Representation 1, giving int32 "stored values", the raw API's
 *   output. The grayscale transform for monochrome data is a table over all 2^BitsStored
 *   stored values (modality LUT, VOI, inversion and padding folded in), so its cost per pixel
 *   is one lookup; the default window's percentiles come from a histogram of stored values.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdatset.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcerror.h"
#include "dcmtk/dcmdata/dcfcache.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcmetinf.h"
#include "dcmtk/dcmdata/dcpixel.h"
#include "dcmtk/dcmdata/dcpixseq.h"
#include "dcmtk/dcmdata/dcpxitem.h"
#include "dcmtk/dcmdata/dcsequen.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/dcmdata/dcxfer.h"

#include "xr-limits.h"

#include "dicom-internal.hpp"

using namespace xrdicom;

namespace
{

/* ---- transfer syntaxes ------------------------------------------------------------------- */

enum class Codec { NATIVE, DCMTK_JPEG, DCMTK_OTHER, J2K };

struct TsRow {
    const char *uid;
    Codec codec;
    bool lossy;
};

/* What we decode. Everything else is XR_E_UNSUPPORTED, named. */
const TsRow ts_table[] = {
    {UID_LittleEndianImplicitTransferSyntax, Codec::NATIVE, false},
    {UID_LittleEndianExplicitTransferSyntax, Codec::NATIVE, false},
    {UID_BigEndianExplicitTransferSyntax, Codec::NATIVE, false},
    {UID_DeflatedExplicitVRLittleEndianTransferSyntax, Codec::NATIVE, false},
    {UID_JPEGProcess1TransferSyntax, Codec::DCMTK_JPEG, true},
    {UID_JPEGProcess2_4TransferSyntax, Codec::DCMTK_JPEG, true},
    {UID_JPEGProcess14TransferSyntax, Codec::DCMTK_JPEG, false},
    {UID_JPEGProcess14SV1TransferSyntax, Codec::DCMTK_JPEG, false},
    {UID_JPEGLSLosslessTransferSyntax, Codec::DCMTK_OTHER, false},
    {UID_JPEGLSLossyTransferSyntax, Codec::DCMTK_OTHER, true},
    {UID_RLELosslessTransferSyntax, Codec::DCMTK_OTHER, false},
    {UID_JPEG2000LosslessOnlyTransferSyntax, Codec::J2K, false},
    {UID_JPEG2000TransferSyntax, Codec::J2K, true},
};

/* Names DCMTK 3.6.7 does not know yet (its dictionary predates them). */
const char *extra_ts_name(const char *uid)
{
    static const char *const names[][2] = {
        {"1.2.840.10008.1.2.4.201", "High-Throughput JPEG 2000 Image Compression (Lossless Only)"},
        {"1.2.840.10008.1.2.4.202",
         "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)"},
        {"1.2.840.10008.1.2.4.203", "High-Throughput JPEG 2000 Image Compression"},
        {"1.2.840.10008.1.2.4.110", "JPEG XL Lossless"},
        {"1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression"},
        {"1.2.840.10008.1.2.4.112", "JPEG XL"},
        {"1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression"},
    };
    for (const auto &n : names)
        if (strcmp(uid, n[0]) == 0)
            return n[1];
    return nullptr;
}

const char *ts_name(const char *uid)
{
    const char *n = extra_ts_name(uid);
    if (!n)
        n = dcmFindNameOfUID(uid, nullptr);
    return n ? n : "unknown";
}

/* ---- the parsed object --------------------------------------------------------------------- */

/* The attributes that describe the pixels. */
struct Attrs {
    char ts[65];
    Codec codec;
    bool lossy;
    uint16_t rows, columns, samples, bits_allocated, bits_stored, high_bit, pixel_rep, planar;
    uint32_t n_frames;
    char pi[17];
};

struct Object {
    Source src;
    DcmFileFormat ff;
    int memfd = -1;
    int inflated_fd = -1; /* a deflated data set, inflated (see inflate_data_set) */
    DcmDataset *ds = nullptr;
    DcmElement *pixel = nullptr;
    Attrs a;
    ~Object()
    {
        if (memfd >= 0)
            close(memfd);
        if (inflated_fd >= 0)
            close(inflated_fd);
    }
};

/* Parse the object: the inflated data set when there is one, else the file at path. */
xr_code parse(Object &o, const char *path, xr_error *err)
{
    char proc[64];
    OFCondition cond;
    if (o.inflated_fd >= 0) {
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", o.inflated_fd);
        cond = o.ff.loadFile(OFFilename(proc), EXS_LittleEndianExplicit, EGL_noChange,
                             DCM_MaxReadLength, ERM_dataset);
    } else {
        cond = o.ff.loadFile(OFFilename(path), EXS_Unknown, EGL_noChange, DCM_MaxReadLength,
                             ERM_autoDetect);
    }
    if (cond.bad()) {
        parse_failure(err, o.src, cond);
        return XR_E_INPUT;
    }
    return XR_OK;
}

/* What a deflated data set may inflate to: the decoded pixels' limit plus the attributes. */
uint64_t deflate_cap(const dicom_pixel_limits *lim)
{
    return lim->max_decoded_bytes + 64ull * 1024 * 1024;
}

xr_code load_file(Object &o, const char *path, const dicom_pixel_limits *lim, xr_error *err)
{
    o.src.path = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not open \"%s\"", path);
    struct stat st;
    int serr = fstat(fd, &st) == 0 ? 0 : errno;
    close(fd);
    if (serr)
        return xr_error_errno(err, serr, "could not stat \"%s\"", path);
    if (S_ISDIR(st.st_mode))
        return xr_error_errno(err, EISDIR, "could not read \"%s\"", path);
    if (!S_ISREG(st.st_mode))
        return fail(err, XR_E_INPUT, o.src, "not a regular file");
    if (st.st_size == 0)
        return fail(err, XR_E_INPUT, o.src, "not a DICOM file: the file is empty");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not open \"%s\"", path);
    xr_code rc = inflate_data_set(fd, deflate_cap(lim), o.src.path, &o.inflated_fd, err);
    close(fd);
    if (rc)
        return rc;
    return parse(o, path, err);
}

/* Through a memfd, like dicom_header_read_buffer: a file stream checks lengths first. */
xr_code load_buffer(Object &o, const void *data, size_t n, const dicom_pixel_limits *lim,
                    xr_error *err)
{
    o.src.path = nullptr;
    if (n == 0)
        return fail(err, XR_E_INPUT, o.src, "not a DICOM file: the data is empty");
    o.memfd = memfd_create("dicom-pixels", MFD_CLOEXEC);
    if (o.memfd < 0)
        return xr_error_errno(err, errno, "could not create a memory file");
    const char *p = static_cast<const char *>(data);
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(o.memfd, p + done, n - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return xr_error_errno(err, errno, "could not fill a memory file");
        }
        done += (size_t)w;
    }
    xr_code rc = inflate_data_set(o.memfd, deflate_cap(lim), o.src.path, &o.inflated_fd, err);
    if (rc)
        return rc;
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", o.memfd);
    return parse(o, path, err);
}

/* A US attribute that must be present. */
xr_code need_us(Object &o, const DcmTagKey &tag, const char *name, uint16_t *ret, xr_error *err)
{
    DcmElement *e = nullptr;
    if (o.ds->findAndGetElement(tag, e).bad() || !e || e->getLength() == 0)
        return fail(err, XR_E_INPUT, o.src, "%s (%04x,%04x) is missing", name, tag.getGroup(),
                    tag.getElement());
    Uint16 v = 0;
    if (e->ident() != EVR_US || e->getUint16(v, 0).bad())
        return fail(err, XR_E_INPUT, o.src, "%s (%04x,%04x) is not a readable US value", name,
                    tag.getGroup(), tag.getElement());
    *ret = v;
    return XR_OK;
}

/* A US attribute with a default when absent. */
xr_code opt_us(Object &o, const DcmTagKey &tag, const char *name, uint16_t dflt, uint16_t *ret,
               xr_error *err)
{
    DcmElement *e = nullptr;
    if (o.ds->findAndGetElement(tag, e).bad() || !e || e->getLength() == 0) {
        *ret = dflt;
        return XR_OK;
    }
    return need_us(o, tag, name, ret, err);
}

xr_code read_attrs(Object &o, xr_error *err)
{
    Attrs &a = o.a;
    memset(&a, 0, sizeof(a));
    o.ds = o.ff.getDataset();
    if (!o.ds)
        return fail(err, XR_E_INTERNAL, o.src, "DCMTK returned no data set");
    if (!o.ds->tagExists(DCM_SOPClassUID) && !o.ds->tagExists(DCM_SOPInstanceUID))
        return fail(err, XR_E_INPUT, o.src,
                    "not a DICOM file: neither SOP Class UID (0008,0016) nor SOP Instance UID "
                    "(0008,0018) in the data set");

    OFString ts;
    DcmMetaInfo *meta = o.ff.getMetaInfo();
    if (o.inflated_fd >= 0)
        ts = UID_DeflatedExplicitVRLittleEndianTransferSyntax; /* parsed without its meta */
    else if (meta)
        (void)meta->findAndGetOFString(DCM_TransferSyntaxUID, ts);
    if (ts.empty()) {
        DcmXfer x(o.ds->getOriginalXfer());
        if (x.getXfer() != EXS_Unknown)
            ts = x.getXferID();
    }
    if (ts.empty())
        return fail(err, XR_E_INPUT, o.src, "no Transfer Syntax UID in the meta header");
    if (ts.length() >= sizeof(a.ts))
        return fail(err, XR_E_INPUT, o.src, "Transfer Syntax UID is %zu characters long",
                    (size_t)ts.length());
    snprintf(a.ts, sizeof(a.ts), "%s", ts.c_str());
    const TsRow *row = nullptr;
    for (const TsRow &r : ts_table)
        if (strcmp(r.uid, a.ts) == 0)
            row = &r;
    if (!row)
        return fail(err, XR_E_UNSUPPORTED, o.src, "unsupported transfer syntax %s (%s)", a.ts,
                    ts_name(a.ts));
    a.codec = row->codec;
    a.lossy = row->lossy;

    if (o.ds->tagExists(DCM_FloatPixelData) || o.ds->tagExists(DCM_DoubleFloatPixelData))
        return fail(err, XR_E_UNSUPPORTED, o.src,
                    "Float Pixel Data (7fe0,0008) or Double Float Pixel Data (7fe0,0009) is not "
                    "supported");
    if (o.ds->findAndGetElement(DCM_PixelData, o.pixel, OFFalse).bad() || !o.pixel)
        return fail(err, XR_E_INPUT, o.src, "no Pixel Data (7fe0,0010) in the data set");

    xr_code rc;
    if ((rc = need_us(o, DCM_Rows, "Rows", &a.rows, err)) ||
        (rc = need_us(o, DCM_Columns, "Columns", &a.columns, err)) ||
        (rc = need_us(o, DCM_BitsAllocated, "Bits Allocated", &a.bits_allocated, err)) ||
        (rc = opt_us(o, DCM_SamplesPerPixel, "Samples per Pixel", 1, &a.samples, err)) ||
        (rc = opt_us(o, DCM_BitsStored, "Bits Stored", a.bits_allocated, &a.bits_stored, err)) ||
        (rc = opt_us(o, DCM_HighBit, "High Bit", (uint16_t)(a.bits_stored - 1), &a.high_bit,
                     err)) ||
        (rc = opt_us(o, DCM_PixelRepresentation, "Pixel Representation", 0, &a.pixel_rep, err)) ||
        (rc = opt_us(o, DCM_PlanarConfiguration, "Planar Configuration", 0, &a.planar, err)))
        return rc;
    if (a.rows == 0 || a.columns == 0)
        return fail(err, XR_E_INPUT, o.src, "image of %u x %u pixels is empty", a.rows,
                    a.columns);
    if (a.bits_allocated != 8 && a.bits_allocated != 16)
        return fail(err, XR_E_UNSUPPORTED, o.src,
                    "Bits Allocated %u is not supported (8 or 16)", a.bits_allocated);
    if (a.bits_stored < 1 || a.bits_stored > a.bits_allocated)
        return fail(err, XR_E_INPUT, o.src, "Bits Stored %u is not in [1, Bits Allocated %u]",
                    a.bits_stored, a.bits_allocated);
    if (a.high_bit < a.bits_stored - 1 || a.high_bit >= a.bits_allocated)
        return fail(err, XR_E_INPUT, o.src,
                    "High Bit %u is not in [Bits Stored - 1, Bits Allocated - 1] = [%u, %u]",
                    a.high_bit, a.bits_stored - 1, a.bits_allocated - 1);
    if (a.pixel_rep > 1)
        return fail(err, XR_E_INPUT, o.src, "Pixel Representation %u is not 0 or 1",
                    a.pixel_rep);
    if (a.planar > 1)
        return fail(err, XR_E_INPUT, o.src, "Planar Configuration %u is not 0 or 1", a.planar);

    OFString pi;
    (void)o.ds->findAndGetOFString(DCM_PhotometricInterpretation, pi);
    if (pi.length() >= sizeof(a.pi))
        return fail(err, XR_E_INPUT, o.src, "Photometric Interpretation is %zu characters long",
                    (size_t)pi.length());
    snprintf(a.pi, sizeof(a.pi), "%s", pi.c_str());
    if (a.pi[0] == '\0')
        return fail(err, XR_E_INPUT, o.src, "Photometric Interpretation (0028,0004) is missing");
    static const char *const color_pi[] = {"RGB",     "YBR_FULL",        "YBR_FULL_422",
                                           "YBR_ICT", "YBR_RCT",         "YBR_PARTIAL_422",
                                           "YBR_PARTIAL_420"};
    bool known = false;
    if (a.samples == 1)
        known = strcmp(a.pi, "MONOCHROME1") == 0 || strcmp(a.pi, "MONOCHROME2") == 0;
    else if (a.samples == 3)
        for (const char *c : color_pi)
            known = known || strcmp(a.pi, c) == 0;
    else
        return fail(err, XR_E_UNSUPPORTED, o.src, "Samples per Pixel %u is not supported (1 or 3)",
                    a.samples);
    if (!known)
        return fail(err, XR_E_UNSUPPORTED, o.src,
                    "Photometric Interpretation \"%s\" with %u sample%s per pixel is not "
                    "supported",
                    a.pi, a.samples, a.samples == 1 ? "" : "s");

    Sint32 nf = 1;
    DcmElement *e = nullptr;
    if (o.ds->findAndGetElement(DCM_NumberOfFrames, e).good() && e && e->getLength() > 0) {
        if (e->getLength() > 64 || o.ds->findAndGetSint32(DCM_NumberOfFrames, nf).bad() || nf < 1)
            return fail(err, XR_E_INPUT, o.src,
                        "Number of Frames (0028,0008) is not an integer of at least 1");
    }
    a.n_frames = (uint32_t)nf;
    return XR_OK;
}

/* Bytes of one frame as stored natively (YBR_FULL_422: two samples per pixel on average). */
uint64_t native_frame_bytes(const Attrs &a)
{
    uint64_t px = (uint64_t)a.rows * a.columns;
    uint64_t samples = strcmp(a.pi, "YBR_FULL_422") == 0 && a.samples == 3 ? 2 * px : px * a.samples;
    return samples * (a.bits_allocated / 8);
}

xr_code check_limits(Object &o, uint32_t n_decode, const dicom_pixel_limits *lim, xr_error *err)
{
    const Attrs &a = o.a;
    if (a.rows > lim->max_rows || a.columns > lim->max_columns)
        return fail(err, XR_E_LIMIT, o.src,
                    "image of %u x %u pixels is larger than the limit of %u x %u (rows x "
                    "columns)",
                    a.rows, a.columns, lim->max_rows, lim->max_columns);
    if (n_decode > lim->max_frames)
        return fail(err, XR_E_LIMIT, o.src, "%u frames to decode are more than the limit of %u",
                    n_decode, lim->max_frames);
    /* The frame buffer must fit DCMTK's Uint32 sizes; then the total in 64 bits cannot wrap. */
    uint64_t frame = (uint64_t)a.rows * a.columns * a.samples * (a.bits_allocated / 8);
    if (frame > UINT32_MAX - 16)
        return fail(err, XR_E_LIMIT, o.src, "a frame of %llu bytes is too large",
                    (unsigned long long)frame);
    uint64_t total = (uint64_t)n_decode * a.rows * a.columns * a.samples * 4 + frame;
    if (total > lim->max_decoded_bytes)
        return fail(err, XR_E_LIMIT, o.src,
                    "decoding needs %llu bytes, more than the limit of %llu",
                    (unsigned long long)total, (unsigned long long)lim->max_decoded_bytes);
    return XR_OK;
}

/* ---- frame decoding ------------------------------------------------------------------------ */

/*
 * A buffer that is not zeroed: std::vector would memset tens of MB per frame that the decoder
 * overwrites anyway (measured: a quarter of the decode time of a 3000 x 2500 CR).
 */
template <typename T> struct RawBuf {
    std::unique_ptr<T[]> p;
    size_t n = 0;
    void resize(size_t k)
    {
        if (k > n) {
            p.reset(new T[k]);
            n = k;
        }
    }
    T *data()
    {
        return p.get();
    }
    size_t size() const
    {
        return n;
    }
};

/* Mask to Bits Stored below High Bit and sign-extend; n samples of the stored width. */
void to_stored(const Attrs &a, const void *buf, size_t n, int32_t *out)
{
    const unsigned shift = a.high_bit + 1u - a.bits_stored;
    const uint32_t mask = a.bits_stored >= 32 ? 0xffffffffu : (1u << a.bits_stored) - 1u;
    const uint32_t sign = 1u << (a.bits_stored - 1);
    const bool is_signed = a.pixel_rep == 1;
    if (a.bits_allocated == 8) {
        const uint8_t *p = static_cast<const uint8_t *>(buf);
        for (size_t i = 0; i < n; i++) {
            uint32_t v = ((uint32_t)p[i] >> shift) & mask;
            out[i] = is_signed && (v & sign) ? (int32_t)v - (int32_t)(mask + 1) : (int32_t)v;
        }
    } else {
        const uint16_t *p = static_cast<const uint16_t *>(buf);
        for (size_t i = 0; i < n; i++) {
            uint32_t v = ((uint32_t)p[i] >> shift) & mask;
            out[i] = is_signed && (v & sign) ? (int32_t)v - (int32_t)(mask + 1) : (int32_t)v;
        }
    }
}

/* Color by plane -> color by pixel, in place through a copy. */
void interleave(std::vector<int32_t> &tmp, int32_t *v, size_t n_px)
{
    tmp.assign(v, v + 3 * n_px);
    for (size_t i = 0; i < n_px; i++) {
        v[3 * i] = tmp[i];
        v[3 * i + 1] = tmp[n_px + i];
        v[3 * i + 2] = tmp[2 * n_px + i];
    }
}

/* The precision in the first SOF marker of a JPEG stream, or 0. */
unsigned jpeg_precision(const uint8_t *d, size_t n)
{
    size_t i = 2;
    if (n < 4 || d[0] != 0xff || d[1] != 0xd8)
        return 0;
    while (i + 4 < n) {
        if (d[i] != 0xff) {
            i++;
            continue;
        }
        uint8_t m = d[i + 1];
        if (m == 0xff) {
            i++;
            continue;
        }
        if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc)
            return d[i + 4];
        if (m == 0xd8 || (m >= 0xd0 && m <= 0xd7) || m == 0x01) {
            i += 2;
            continue;
        }
        i += 2 + ((size_t)d[i + 2] << 8 | d[i + 3]);
    }
    return 0;
}

/*
 * DCMTK 3.6.7 reads each JPEG frame's bit depth (DJCodecDecoder::scanJpegDataForBitDepth) by
 * walking markers until a frame header; at a TEM marker (0xFF01) it does not advance and loops
 * forever (found by fuzzing: a 1 KB file hung the decoder). This walks the markers by the same
 * rules and returns the offset of a TEM that walk would reach, or -1 when it ends (at a frame
 * header, an invalid marker or the end).
 */
long dcmtk_jpeg_tem_offset(const uint8_t *d, size_t n)
{
    size_t i = 0;
    while (i + 4 < n) {
        if (d[i] != 0xff)
            return -1;
        uint8_t m = d[i + 1];
        size_t seg = 2 + ((size_t)d[i + 2] << 8 | d[i + 3]);
        if (m == 0x01)
            return (long)i;
        if (m == 0xff)
            i += 1;
        else if ((m >= 0xc0 && m <= 0xcf) && m != 0xc4 && m != 0xc8 && m != 0xcc)
            return -1; /* a frame header: the walk stops */
        else if (m == 0xc4 || m == 0xc8 || m == 0xcc || (m >= 0xda && m <= 0xfe))
            i += seg;
        else if (m >= 0xd0 && m <= 0xd9)
            i += 2;
        else if (m > 0x02 && m <= 0xbf)
            i += 2; /* reserved markers */
        else
            return -1;
    }
    return -1;
}

struct FrameReader {
    Object &o;
    RawBuf<uint8_t> buf;          /* one frame as the decoder writes it */
    std::vector<int32_t> tmp;     /* scratch for interleaving */
    std::vector<uint8_t> j2k;     /* one JPEG 2000 frame's fragments */
    DcmFileCache cache;
    Uint32 next_fragment = 0;
    DcmPixelSequence *seq = nullptr;
    unsigned jpeg_bytes = 0; /* bytes per sample of the JPEG decoder's output */

    explicit FrameReader(Object &obj) : o(obj)
    {
    }

    xr_code prepare(uint32_t n_decode, xr_error *err)
    {
        const Attrs &a = o.a;
        if (a.codec == Codec::NATIVE) {
            if (o.pixel->getLengthField() == DCM_UndefinedLength ||
                !dynamic_cast<DcmPixelData *>(o.pixel))
                return fail(err, XR_E_INPUT, o.src,
                            "Pixel Data is encapsulated but the transfer syntax %s is native",
                            a.ts);
            uint64_t need = native_frame_bytes(a) * n_decode;
            uint64_t have = o.pixel->getLengthField();
            if (have < need)
                return fail(err, XR_E_INPUT, o.src,
                            "Pixel Data has %llu bytes but %u frame%s of %u x %u x %u samples "
                            "of %u bits need %llu",
                            (unsigned long long)have, n_decode, n_decode == 1 ? "" : "s", a.rows,
                            a.columns, a.samples, a.bits_allocated, (unsigned long long)need);
            buf.resize(native_frame_bytes(a) + 2);
            return XR_OK;
        }
        DcmPixelData *pd = dynamic_cast<DcmPixelData *>(o.pixel);
        if (!pd)
            return fail(err, XR_E_INPUT, o.src, "Pixel Data is not a pixel data element");
        E_TransferSyntax rep = EXS_Unknown;
        const DcmRepresentationParameter *param = nullptr;
        pd->getOriginalRepresentationKey(rep, param);
        if (pd->getEncapsulatedRepresentation(rep, param, seq).bad() || !seq)
            return fail(err, XR_E_INPUT, o.src,
                        "Pixel Data is not encapsulated but the transfer syntax %s is "
                        "compressed",
                        a.ts);
        if (seq->card() < 2)
            return fail(err, XR_E_INPUT, o.src, "Pixel Data has no fragments");
        buf.resize((size_t)a.rows * a.columns * a.samples * (a.bits_allocated / 8) + 2);
        jpeg_bytes = a.bits_allocated / 8;
        if (a.codec == Codec::DCMTK_JPEG) {
            /* every fragment may start a frame: none may hold what hangs DCMTK's scanner */
            for (unsigned long k = 1; k < seq->card(); k++) {
                DcmPixelItem *fi = nullptr;
                Uint8 *fd = nullptr;
                if (seq->getItem(fi, k).bad() || !fi || fi->getUint8Array(fd).bad() || !fd)
                    continue;
                long t = dcmtk_jpeg_tem_offset(fd, fi->getLength());
                if (t >= 0)
                    return fail(err, XR_E_INPUT, o.src,
                                "JPEG fragment %lu has a TEM marker (0xFF01) at byte %ld "
                                "before its frame header; expected a SOF marker first",
                                k, t);
            }
            /* DCMTK's JPEG decoder writes bytes or words by the JPEG precision, not by Bits
             * Allocated; both disagree in some real files. */
            DcmPixelItem *it = nullptr;
            Uint8 *d = nullptr;
            if (seq->getItem(it, 1).good() && it && it->getUint8Array(d).good() && d) {
                unsigned p = jpeg_precision(d, it->getLength());
                if (p > 0)
                    jpeg_bytes = p > 8 ? 2 : 1;
            }
        }
        return XR_OK;
    }

    /*
     * DCMTK 3.6.7's RLE decoder trusts the segment offsets of the RLE header (PS3.5 G.5) and
     * reads past the fragment when one points beyond it (found by fuzzing: SEGV in
     * DcmRLEDecoder::decompress). Check the header of frame f's fragment first; RLE has exactly
     * one fragment per frame (PS3.5 A.4.2), which is also all DCMTK decodes.
     */
    xr_code check_rle(uint32_t f, xr_error *err)
    {
        const Attrs &a = o.a;
        const unsigned long n_frag = seq->card() - 1;
        if (n_frag != a.n_frames)
            return fail(err, XR_E_INPUT, o.src,
                        "RLE Pixel Data has %lu fragments for %u frames (must be one per frame)",
                        n_frag, a.n_frames);
        DcmPixelItem *it = nullptr;
        Uint8 *d = nullptr;
        if (seq->getItem(it, f + 1).bad() || !it || it->getUint8Array(d).bad())
            return fail(err, XR_E_INPUT, o.src, "cannot read the RLE fragment of frame %u", f + 1);
        const Uint32 len = it->getLength();
        if (!d || len < 64)
            return fail(err, XR_E_INPUT, o.src,
                        "RLE fragment of frame %u has %u bytes, less than its 64-byte header",
                        f + 1, (unsigned)len);
        uint32_t h[16];
        for (int i = 0; i < 16; i++)
            h[i] = (uint32_t)d[4 * i] | (uint32_t)d[4 * i + 1] << 8 |
                   (uint32_t)d[4 * i + 2] << 16 | (uint32_t)d[4 * i + 3] << 24;
        const uint32_t want = (uint32_t)a.samples * (a.bits_allocated / 8);
        if (h[0] != want)
            return fail(err, XR_E_INPUT, o.src,
                        "RLE header of frame %u has %u segments but %u samples of %u bits need %u",
                        f + 1, h[0], a.samples, a.bits_allocated, want);
        for (uint32_t i = 1; i <= h[0]; i++) {
            uint32_t lo = i == 1 ? 64 : h[i - 1];
            if (h[i] < lo || h[i] >= len || (i == 1 && h[1] != 64))
                return fail(err, XR_E_INPUT, o.src,
                            "RLE header of frame %u: segment %u starts at %u, outside [%u, %u)",
                            f + 1, i, h[i], lo, (unsigned)len);
        }
        return XR_OK;
    }

    /* Gather the fragments of JPEG 2000 frame f into j2k. */
    xr_code j2k_fragments(uint32_t f, xr_error *err)
    {
        const unsigned long n_frag = seq->card() - 1;
        j2k.clear();
        auto append = [&](unsigned long i) -> xr_code {
            DcmPixelItem *it = nullptr;
            Uint8 *d = nullptr;
            if (seq->getItem(it, i).bad() || !it)
                return fail(err, XR_E_INPUT, o.src, "cannot read fragment %lu", i);
            Uint32 len = it->getLength();
            if (len == 0)
                return XR_OK;
            if (it->getUint8Array(d).bad() || !d)
                return fail(err, XR_E_INPUT, o.src, "cannot read fragment %lu", i);
            j2k.insert(j2k.end(), d, d + len);
            it->compact(); /* back to disk: memory stays one frame */
            return XR_OK;
        };
        xr_code rc;
        if (o.a.n_frames == 1) {
            for (unsigned long i = 1; i <= n_frag; i++)
                if ((rc = append(i)))
                    return rc;
            return XR_OK;
        }
        if (n_frag == o.a.n_frames)
            return append(f + 1);
        /* Several fragments per frame: a new frame starts with a codestream's SOC + SIZ. */
        uint32_t frame = 0;
        bool started = false;
        for (unsigned long i = 1; i <= n_frag; i++) {
            DcmPixelItem *it = nullptr;
            Uint8 *d = nullptr;
            if (seq->getItem(it, i).bad() || !it || it->getUint8Array(d).bad())
                return fail(err, XR_E_INPUT, o.src, "cannot read fragment %lu", i);
            bool soc = d && it->getLength() >= 4 && d[0] == 0xff && d[1] == 0x4f &&
                       d[2] == 0xff && d[3] == 0x51;
            if (soc && started)
                frame++;
            started = started || soc;
            if (frame > f)
                break;
            if (frame == f && started && (rc = append(i)))
                return rc;
            it->compact();
        }
        if (j2k.empty())
            return fail(err, XR_E_INPUT, o.src, "no JPEG 2000 data for frame %u", f + 1);
        return XR_OK;
    }

    /* Frame f -> out (rows x columns x samples stored values, color by pixel). */
    xr_code read(uint32_t f, int32_t *out, char *color_model, size_t cm_bytes, xr_error *err)
    {
        const Attrs &a = o.a;
        const size_t n_px = (size_t)a.rows * a.columns;
        snprintf(color_model, cm_bytes, "%s", a.pi);
        if (a.codec == Codec::J2K) {
            xr_code rc = j2k_fragments(f, err);
            if (rc)
                return rc;
            rc = j2k_decode_frame(j2k.data(), j2k.size(), a.rows, a.columns, a.samples, out, err);
            if (rc) {
                xr_error_prefix(err, "frame %u: ", f + 1);
                if (o.src.path)
                    xr_error_prefix(err, "\"%s\": ", o.src.path);
                return rc;
            }
            /* The codestream's values are the stored ones: same masking as other codecs. */
            if (a.bits_allocated == 16) {
                uint16_t *p = reinterpret_cast<uint16_t *>(buf.data());
                for (size_t i = 0; i < n_px * a.samples; i++)
                    p[i] = (uint16_t)((uint32_t)out[i] << (a.high_bit + 1u - a.bits_stored));
            } else {
                uint8_t *p = buf.data();
                for (size_t i = 0; i < n_px * a.samples; i++)
                    p[i] = (uint8_t)((uint32_t)out[i] << (a.high_bit + 1u - a.bits_stored));
            }
            to_stored(a, buf.data(), n_px * a.samples, out);
            /* OpenJPEG has undone the component transform. */
            if (strcmp(a.pi, "YBR_ICT") == 0 || strcmp(a.pi, "YBR_RCT") == 0)
                snprintf(color_model, cm_bytes, "RGB");
            return XR_OK;
        }
        if (a.codec == Codec::NATIVE) {
            const uint64_t fb = native_frame_bytes(a);
            OFCondition cond = o.pixel->getPartialValue(buf.data(), (Uint32)(fb * f), (Uint32)fb,
                                                        &cache, gLocalByteOrder);
            if (cond.bad())
                return error_from_condition(err, XR_E_INPUT, cond, "%s%s%scannot read frame %u",
                                            o.src.path ? "\"" : "", o.src.path ? o.src.path : "",
                                            o.src.path ? "\": " : "", f + 1);
            if (strcmp(a.pi, "YBR_FULL_422") == 0 && a.samples == 3) {
                /* Y1 Y2 Cb Cr per pixel pair (PS3.3 C.7.6.3.1.2); odd widths keep the last. */
                std::vector<int32_t> packed(2 * n_px);
                to_stored(a, buf.data(), 2 * n_px, packed.data());
                for (size_t r = 0; r < a.rows; r++) {
                    const int32_t *src = packed.data() + r * 2 * a.columns;
                    int32_t *dst = out + r * 3 * a.columns;
                    for (size_t c = 0; c < a.columns; c += 2) {
                        const int32_t *q = src + 2 * c;
                        dst[3 * c] = q[0];
                        dst[3 * c + 1] = q[2];
                        dst[3 * c + 2] = q[3];
                        if (c + 1 < a.columns) {
                            dst[3 * c + 3] = q[1];
                            dst[3 * c + 4] = q[2];
                            dst[3 * c + 5] = q[3];
                        }
                    }
                }
                snprintf(color_model, cm_bytes, "YBR_FULL");
                return XR_OK;
            }
            to_stored(a, buf.data(), n_px * a.samples, out);
            if (a.samples == 3 && a.planar == 1)
                interleave(tmp, out, n_px);
            return XR_OK;
        }
        /* DCMTK codecs. */
        if (strcmp(a.ts, UID_RLELosslessTransferSyntax) == 0) {
            xr_code rc = check_rle(f, err);
            if (rc)
                return rc;
        }
        DcmPixelData *pd = static_cast<DcmPixelData *>(o.pixel);
        OFString cm;
        Uint32 start = f == 0 ? 0 : next_fragment;
        OFCondition cond = pd->getUncompressedFrame(o.ds, f, start, buf.data(),
                                                    (Uint32)buf.size(), cm, &cache);
        if (cond.bad())
            return error_from_condition(err, XR_E_INPUT, cond, "%s%s%scannot decode frame %u",
                                        o.src.path ? "\"" : "", o.src.path ? o.src.path : "",
                                        o.src.path ? "\": " : "", f + 1);
        next_fragment = start;
        if (!cm.empty())
            snprintf(color_model, cm_bytes, "%s", cm.c_str());
        if (a.codec == Codec::DCMTK_JPEG && jpeg_bytes != a.bits_allocated / 8) {
            Attrs b = a;
            b.bits_allocated = (uint16_t)(8 * jpeg_bytes);
            if (b.bits_stored > b.bits_allocated)
                b.bits_stored = b.bits_allocated;
            b.high_bit = (uint16_t)(b.bits_stored - 1);
            to_stored(b, buf.data(), n_px * a.samples, out);
        } else {
            to_stored(a, buf.data(), n_px * a.samples, out);
        }
        if (a.samples == 3 && a.planar == 1)
            interleave(tmp, out, n_px);
        return XR_OK;
    }
};

/* ---- grayscale transform ------------------------------------------------------------------- */

/* A LUT from a Modality or VOI LUT Sequence item (PS3.3 C.11.1.1, C.11.2.1.1). */
struct Lut {
    int32_t first = 0;
    uint32_t n = 0;
    unsigned bits = 0;
    std::vector<uint16_t> data;

    double at(double x) const
    {
        double i = floor(x) - first;
        if (i < 0)
            i = 0;
        if (i > n - 1.0)
            i = n - 1.0;
        return data[(size_t)i];
    }
};

/* The i-th value of a US/SS ("xs") element; signed_hint reads US as int16 (first mapped). */
bool get_xs(DcmItem &it, const DcmTagKey &tag, unsigned long i, bool signed_hint, int32_t *ret)
{
    DcmElement *e = nullptr;
    if (it.findAndGetElement(tag, e).bad() || !e)
        return false;
    if (e->ident() == EVR_SS) {
        Sint16 v;
        if (e->getSint16(v, i).bad())
            return false;
        *ret = v;
        return true;
    }
    Uint16 v;
    if (e->getUint16(v, i).bad())
        return false;
    *ret = signed_hint ? (int32_t)(int16_t)v : (int32_t)v;
    return true;
}

xr_code read_lut(Object &o, DcmItem &item, const char *what, Lut *lut, xr_error *err)
{
    int32_t n, first, bits;
    if (!get_xs(item, DCM_LUTDescriptor, 0, false, &n) ||
        !get_xs(item, DCM_LUTDescriptor, 1, o.a.pixel_rep == 1, &first) ||
        !get_xs(item, DCM_LUTDescriptor, 2, false, &bits))
        return fail(err, XR_E_INPUT, o.src, "%s: LUT Descriptor (0028,3002) is not 3 values",
                    what);
    lut->n = n == 0 ? 65536 : (uint32_t)n;
    lut->first = first;
    if (bits < 1 || bits > 16)
        return fail(err, XR_E_INPUT, o.src, "%s: LUT Descriptor gives %d bits, not 1 to 16", what,
                    (int)bits);
    lut->bits = (unsigned)bits;
    DcmElement *e = nullptr;
    if (item.findAndGetElement(DCM_LUTData, e).bad() || !e)
        return fail(err, XR_E_INPUT, o.src, "%s: LUT Data (0028,3006) is missing", what);
    Uint16 *w = nullptr;
    if (e->getLength() > 2 * 65536u || e->getUint16Array(w).bad() || !w)
        return fail(err, XR_E_INPUT, o.src, "%s: LUT Data (0028,3006) is not readable", what);
    size_t n_words = e->getLength() / 2;
    if (n_words >= lut->n) {
        lut->data.assign(w, w + lut->n);
    } else if (lut->bits <= 8 && 2 * n_words >= lut->n) {
        /* 8-bit entries packed two per word (seen in old objects). */
        lut->data.resize(lut->n);
        for (uint32_t i = 0; i < lut->n; i++)
            lut->data[i] = (uint16_t)((w[i / 2] >> (8 * (i % 2))) & 0xff);
    } else {
        return fail(err, XR_E_INPUT, o.src,
                    "%s: LUT Data has %zu entries but the descriptor says %u", what, n_words,
                    lut->n);
    }
    return XR_OK;
}

struct Gray {
    bool have_modality_lut = false;
    Lut modality_lut;
    double slope = 1, intercept = 0;
    bool have_voi_lut = false;
    Lut voi_lut;
    bool have_window = false;
    double center = 0, width = 0;
    enum { LINEAR, LINEAR_EXACT, SIGMOID } function = LINEAR;
    bool invert = false;
    bool have_padding = false;
    int32_t pad_lo = 0, pad_hi = 0;

    double modality(int32_t v) const
    {
        return have_modality_lut ? modality_lut.at(v) : v * slope + intercept;
    }
};

const char *function_name(int f)
{
    return f == Gray::LINEAR_EXACT ? "LINEAR_EXACT" : f == Gray::SIGMOID ? "SIGMOID" : "LINEAR";
}

/* PS3.3 C.11.2.1.2 with y_min = 0, y_max = 1. */
double window(int function, double c, double w, double x)
{
    switch (function) {
    case Gray::LINEAR_EXACT:
        if (x <= c - w / 2)
            return 0;
        if (x > c + w / 2)
            return 1;
        return (x - c) / w + 0.5;
    case Gray::SIGMOID:
        return 1 / (1 + exp(-4 * (x - c) / w));
    default:
        if (x <= c - 0.5 - (w - 1) / 2)
            return 0;
        if (x > c - 0.5 + (w - 1) / 2)
            return 1;
        return (x - (c - 0.5)) / (w - 1) + 0.5;
    }
}

/* The first item of a LUT sequence, unless it is empty (some writers leave a hollow item). */
DcmItem *lut_item(DcmDataset &ds, const DcmTagKey &tag)
{
    DcmSequenceOfItems *sq = nullptr;
    if (ds.findAndGetSequence(tag, sq).bad() || !sq || sq->card() == 0)
        return nullptr;
    DcmItem *it = sq->getItem(0);
    DcmElement *d = nullptr, *data = nullptr;
    if (!it || it->findAndGetElement(DCM_LUTDescriptor, d).bad() || !d || d->getLength() == 0 ||
        it->findAndGetElement(DCM_LUTData, data).bad() || !data || data->getLength() == 0)
        return nullptr;
    return it;
}

xr_code read_gray(Object &o, Gray *g, xr_error *err)
{
    DcmDataset &ds = *o.ds;
    xr_code rc;
    DcmItem *it = lut_item(ds, DCM_ModalityLUTSequence);
    if (it) {
        if ((rc = read_lut(o, *it, "Modality LUT Sequence", &g->modality_lut, err)))
            return rc;
        g->have_modality_lut = true;
    } else {
        Float64 v;
        if (ds.findAndGetFloat64(DCM_RescaleSlope, v).good()) {
            if (!isfinite(v) || v == 0)
                return fail(err, XR_E_INPUT, o.src, "Rescale Slope %g is not usable", v);
            g->slope = v;
        }
        if (ds.findAndGetFloat64(DCM_RescaleIntercept, v).good()) {
            if (!isfinite(v))
                return fail(err, XR_E_INPUT, o.src, "Rescale Intercept is not finite");
            g->intercept = v;
        }
    }
    if ((it = lut_item(ds, DCM_VOILUTSequence))) {
        if ((rc = read_lut(o, *it, "VOI LUT Sequence", &g->voi_lut, err)))
            return rc;
        g->have_voi_lut = true;
    }
    Float64 c, w;
    if (ds.findAndGetFloat64(DCM_WindowCenter, c, 0).good() &&
        ds.findAndGetFloat64(DCM_WindowWidth, w, 0).good() && isfinite(c) && isfinite(w)) {
        OFString fn;
        (void)ds.findAndGetOFString(DCM_VOILUTFunction, fn);
        if (fn == "LINEAR_EXACT")
            g->function = Gray::LINEAR_EXACT;
        else if (fn == "SIGMOID")
            g->function = Gray::SIGMOID;
        /* A width the function cannot use falls back to the default window. */
        g->have_window = g->function == Gray::LINEAR ? w >= 1 : w > 0;
        g->center = c;
        g->width = w;
    }
    OFString shape;
    (void)ds.findAndGetOFString(DCM_PresentationLUTShape, shape);
    g->invert = strcmp(o.a.pi, "MONOCHROME1") == 0 || shape == "INVERSE";
    int32_t ppv, limit;
    if (get_xs(ds, DCM_PixelPaddingValue, 0, o.a.pixel_rep == 1, &ppv)) {
        g->have_padding = true;
        g->pad_lo = g->pad_hi = ppv;
        if (get_xs(ds, DCM_PixelPaddingRangeLimit, 0, o.a.pixel_rep == 1, &limit)) {
            g->pad_lo = std::min(ppv, limit);
            g->pad_hi = std::max(ppv, limit);
        }
    }
    return XR_OK;
}

/* numpy.percentile(values, p) ("linear") of the modality values over a histogram. */
double percentile(const std::vector<std::pair<double, uint64_t>> &sorted, uint64_t total, double p)
{
    const double pos = p / 100.0 * (double)(total - 1);
    const uint64_t k = (uint64_t)floor(pos);
    const double t = pos - (double)k;
    double a = 0, b = 0;
    uint64_t seen = 0;
    bool have_a = false;
    for (const auto &e : sorted) {
        seen += e.second;
        if (!have_a && seen > k) {
            a = e.first;
            have_a = true;
        }
        if (seen > k + 1 || (seen > k && k + 1 >= total)) {
            b = e.first;
            break;
        }
    }
    if (k + 1 >= total)
        b = a;
    return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

/* One monochrome frame of stored values -> [0,1]. */
void gray_mono(const Attrs &a, const Gray &g, const int32_t *v, size_t n, float *out,
               dicom_image *info, bool first_frame)
{
    const int32_t vmin = a.pixel_rep ? -(1 << (a.bits_stored - 1)) : 0;
    const size_t n_values = (size_t)1 << a.bits_stored;
    std::vector<float> table(n_values);
    auto padding = [&](int32_t s) { return g.have_padding && s >= g.pad_lo && s <= g.pad_hi; };

    dicom_voi_source src;
    double c = g.center, w = g.width;
    int function = g.function;
    if (g.have_voi_lut) {
        src = DICOM_VOI_LUT;
    } else if (g.have_window) {
        src = DICOM_VOI_WINDOW;
    } else {
        src = DICOM_VOI_DEFAULT;
        function = Gray::LINEAR_EXACT;
        std::vector<uint64_t> hist(n_values, 0);
        for (size_t i = 0; i < n; i++)
            hist[(size_t)(v[i] - vmin)]++;
        std::vector<std::pair<double, uint64_t>> sorted;
        uint64_t total = 0;
        for (size_t i = 0; i < n_values; i++) {
            int32_t s = (int32_t)i + vmin;
            if (hist[i] && !padding(s)) {
                sorted.emplace_back(g.modality(s), hist[i]);
                total += hist[i];
            }
        }
        std::sort(sorted.begin(), sorted.end());
        if (total == 0) {
            c = 0;
            w = 0;
        } else {
            double lo = percentile(sorted, total, 0.5), hi = percentile(sorted, total, 99.5);
            c = (lo + hi) / 2;
            w = hi - lo;
        }
    }
    for (size_t i = 0; i < n_values; i++) {
        int32_t s = (int32_t)i + vmin;
        if (padding(s)) {
            table[i] = 0;
            continue;
        }
        double x = g.modality(s), y;
        if (src == DICOM_VOI_LUT)
            y = g.voi_lut.at(x) / (double)((1u << g.voi_lut.bits) - 1);
        else if (w <= 0)
            y = 0; /* a constant frame under the default window */
        else
            y = window(function, c, w, x);
        if (y < 0)
            y = 0;
        if (y > 1)
            y = 1;
        table[i] = (float)(g.invert ? 1 - y : y);
    }
    for (size_t i = 0; i < n; i++)
        out[i] = table[(size_t)(v[i] - vmin)];
    if (first_frame) {
        info->voi_source = src;
        info->window_center = src == DICOM_VOI_LUT ? NAN : c;
        info->window_width = src == DICOM_VOI_LUT ? NAN : w;
        snprintf(info->voi_function, sizeof(info->voi_function), "%s",
                 src == DICOM_VOI_LUT ? "" : function_name(function));
    }
}

/* One color frame (color by pixel) -> BT.601 luma in [0,1]. */
void gray_color(const Attrs &a, const char *color_model, const int32_t *v, size_t n_px,
                float *out)
{
    const double scale = 1.0 / (double)((1u << a.bits_stored) - 1);
    const bool ybr = strncmp(color_model, "YBR", 3) == 0;
    for (size_t i = 0; i < n_px; i++) {
        const int32_t *p = v + 3 * i;
        double y = ybr ? p[0] : 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        y *= scale;
        out[i] = (float)(y < 0 ? 0 : y > 1 ? 1 : y);
    }
}

/* ---- the two entry points' common body ----------------------------------------------------- */

xr_code open_object(Object &o, const char *path, const void *buf, size_t n,
                    const dicom_pixel_limits *limits, dicom_frame_policy policy,
                    uint32_t *ret_n_decode, xr_error *err)
{
    xr_code rc = path ? load_file(o, path, limits, err) : load_buffer(o, buf, n, limits, err);
    if (rc)
        return rc;
    if ((rc = read_attrs(o, err)))
        return rc;
    uint32_t n_decode = policy == DICOM_FRAMES_ALL ? o.a.n_frames : 1;
    if ((rc = check_limits(o, n_decode, limits, err)))
        return rc;
    *ret_n_decode = n_decode;
    return XR_OK;
}

bool args_ok(const void *src, dicom_frame_policy policy, const dicom_pixel_limits *limits,
             const void *ret)
{
    return src && ret && limits && (unsigned)policy < DICOM_FRAMES_MAX;
}

xr_code image_read(const char *path, const void *buf, size_t n, dicom_frame_policy policy,
                   const dicom_pixel_limits *limits, dicom_image *ret, xr_error *err)
{
    Object o;
    uint32_t n_decode = 0;
    xr_code rc = open_object(o, path, buf, n, limits, policy, &n_decode, err);
    if (rc)
        return rc;
    const Attrs &a = o.a;
    Gray g;
    if (a.samples == 1 && (rc = read_gray(o, &g, err)))
        return rc;
    FrameReader fr(o);
    if ((rc = fr.prepare(n_decode, err)))
        return rc;
    const size_t n_px = (size_t)a.rows * a.columns;
    float *pixels = static_cast<float *>(malloc(n_px * n_decode * sizeof(float)));
    if (!pixels)
        return xr_error_set(err, XR_E_NOMEM, "out of memory for %u frames of %u x %u pixels",
                            n_decode, a.rows, a.columns);
    dicom_image img;
    memset(&img, 0, sizeof(img));
    try {
        RawBuf<int32_t> v;
        v.resize(n_px * a.samples);
        char cm[17];
        for (uint32_t f = 0; f < n_decode; f++) {
            if ((rc = fr.read(f, v.data(), cm, sizeof(cm), err))) {
                free(pixels);
                return rc;
            }
            if (a.samples == 1)
                gray_mono(a, g, v.data(), n_px, pixels + f * n_px, &img, f == 0);
            else
                gray_color(a, cm, v.data(), n_px, pixels + f * n_px);
        }
    } catch (...) {
        free(pixels);
        throw;
    }
    img.rows = a.rows;
    img.columns = a.columns;
    img.n_frames = n_decode;
    img.pixels = pixels;
    img.n_frames_in_object = a.n_frames;
    snprintf(img.transfer_syntax_uid, sizeof(img.transfer_syntax_uid), "%s", a.ts);
    snprintf(img.photometric_interpretation, sizeof(img.photometric_interpretation), "%s", a.pi);
    img.bits_allocated = a.bits_allocated;
    img.bits_stored = a.bits_stored;
    img.samples_per_pixel = a.samples;
    img.is_signed = a.pixel_rep == 1;
    img.lossy = a.lossy;
    img.inverted = g.invert;
    if (a.samples != 1) {
        img.voi_source = DICOM_VOI_NONE;
        img.window_center = img.window_width = NAN;
    }
    *ret = img;
    return XR_OK;
}

xr_code raw_read(const char *path, dicom_frame_policy policy, const dicom_pixel_limits *limits,
                 dicom_raw_image *ret, xr_error *err)
{
    Object o;
    uint32_t n_decode = 0;
    xr_code rc = open_object(o, path, nullptr, 0, limits, policy, &n_decode, err);
    if (rc)
        return rc;
    const Attrs &a = o.a;
    FrameReader fr(o);
    if ((rc = fr.prepare(n_decode, err)))
        return rc;
    const size_t n_frame = (size_t)a.rows * a.columns * a.samples;
    int32_t *values = static_cast<int32_t *>(malloc(n_frame * n_decode * sizeof(int32_t)));
    if (!values)
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    dicom_raw_image r;
    memset(&r, 0, sizeof(r));
    try {
        for (uint32_t f = 0; f < n_decode; f++) {
            if ((rc = fr.read(f, values + f * n_frame, r.color_model, sizeof(r.color_model),
                              err))) {
                free(values);
                return rc;
            }
        }
    } catch (...) {
        free(values);
        throw;
    }
    r.rows = a.rows;
    r.columns = a.columns;
    r.n_frames = n_decode;
    r.samples_per_pixel = a.samples;
    r.values = values;
    *ret = r;
    return XR_OK;
}

} // namespace

const char *dicom_frame_policy_name(dicom_frame_policy policy) noexcept
{
    switch (policy) {
    case DICOM_FRAMES_FIRST:
        return "first";
    case DICOM_FRAMES_ALL:
        return "all";
    default:
        return NULL;
    }
}

int dicom_frame_policy_from_string(const char *s) noexcept
{
    if (!s)
        return -1;
    for (int p = 0; p < DICOM_FRAMES_MAX; p++)
        if (strcmp(s, dicom_frame_policy_name((dicom_frame_policy)p)) == 0)
            return p;
    return -1;
}

const char *dicom_voi_source_name(dicom_voi_source s) noexcept
{
    switch (s) {
    case DICOM_VOI_NONE:
        return "none";
    case DICOM_VOI_LUT:
        return "lut";
    case DICOM_VOI_WINDOW:
        return "window";
    case DICOM_VOI_DEFAULT:
        return "default";
    default:
        return NULL;
    }
}

dicom_pixel_limits dicom_pixel_limits_default(void) noexcept
{
    return dicom_pixel_limits{
        .max_rows = XR_PIXELS_MAX_ROWS_DEFAULT,
        .max_columns = XR_PIXELS_MAX_COLUMNS_DEFAULT,
        .max_frames = XR_PIXELS_MAX_FRAMES_DEFAULT,
        .max_decoded_bytes = XR_PIXELS_MAX_DECODED_BYTES_DEFAULT,
    };
}

xr_code dicom_image_read(const char *path, dicom_frame_policy policy,
                         const dicom_pixel_limits *limits, dicom_image *ret, xr_error *err) noexcept
{
    DICOM_API_BEGIN
    if (!args_ok(path, policy, limits, ret)) {
        assert(!"dicom_image_read: invalid argument");
        return xr_error_set(err, XR_E_INTERNAL, "dicom_image_read called with an invalid argument");
    }
    return image_read(path, nullptr, 0, policy, limits, ret, err);
    DICOM_API_END(err)
}

xr_code dicom_image_read_buffer(const void *buf, size_t n_bytes, dicom_frame_policy policy,
                                const dicom_pixel_limits *limits, dicom_image *ret,
                                xr_error *err) noexcept
{
    DICOM_API_BEGIN
    if (!args_ok(buf || n_bytes == 0 ? "" : nullptr, policy, limits, ret)) {
        assert(!"dicom_image_read_buffer: invalid argument");
        return xr_error_set(err, XR_E_INTERNAL,
                            "dicom_image_read_buffer called with an invalid argument");
    }
    return image_read(nullptr, buf ? buf : "", n_bytes, policy, limits, ret, err);
    DICOM_API_END(err)
}

void dicom_image_done(dicom_image *img) noexcept
{
    if (!img)
        return;
    free(img->pixels);
    memset(img, 0, sizeof(*img));
}

xr_code dicom_raw_image_read(const char *path, dicom_frame_policy policy,
                             const dicom_pixel_limits *limits, dicom_raw_image *ret,
                             xr_error *err) noexcept
{
    DICOM_API_BEGIN
    if (!args_ok(path, policy, limits, ret)) {
        assert(!"dicom_raw_image_read: invalid argument");
        return xr_error_set(err, XR_E_INTERNAL,
                            "dicom_raw_image_read called with an invalid argument");
    }
    return raw_read(path, policy, limits, ret, err);
    DICOM_API_END(err)
}

void dicom_raw_image_done(dicom_raw_image *img) noexcept
{
    if (!img)
        return;
    free(img->values);
    memset(img, 0, sizeof(*img));
}
