/*
 * dicom_header_read*: the attributes the registry needs, copied out of a Part-10 file (or a bare
 * data set) into the fixed-size dicom_header.
 *
 * The whole object is parsed with DCMTK's default maximum read length (DCM_MaxReadLength, 4 KiB):
 * element values longer than that (pixel data, large private blobs) are left on disk and never
 * loaded, so reading the header of a 500 MB multi-frame file costs a few seeks, while the
 * structure of the entire object (element lengths against the file size, item delimitation) is
 * still checked. That is why a file truncated inside its pixel data fails here already. A
 * deflated object is inflated first, into a memfd capped at XR_OBJECT_MAX_BYTES
 * (inflate_data_set), and that is parsed the same way: DCMTK's own deflate stream cannot seek,
 * so it would load every value and allocate whatever length an element claims. Buffers are
 * parsed the same way, through a memfd (see dicom_header_read_buffer).
 *
 * Garbage is rejected in two layers. DCMTK fails on most non-DICOM input (an element that claims
 * more bytes than are left). Input that happens to parse (a valid meta header followed by text, a
 * run of 0xFF bytes read as an empty data set) is caught by requiring SOP Class UID or SOP
 * Instance UID in the data set. A data set with one of them, or without Study or Series Instance
 * UID, is not a parse error: those fields come back "" and the caller decides (A900).
 *
 * Real-world headers carry malformed descriptive values (a 56-byte birth date, text in an IS);
 * those are repaired and reported in dicom_header.repairs, never fatal. UIDs stay strict.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdatset.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcerror.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcmetinf.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/dcmdata/dcxfer.h"

#include "xr-limits.h"

#include "dicom-internal.hpp"

using namespace xrdicom;

namespace
{

/* One string attribute copied into a char[] field of dicom_header. */
struct StringAttr {
    DcmTagKey tag;
    const char *name; /* DICOM keyword, for messages */
    size_t offset;
    size_t size; /* of the field, including the NUL */
};

#define STRING_ATTR(tag, keyword, field)                                                           \
    {                                                                                              \
        tag, keyword, offsetof(dicom_header, field), sizeof(((dicom_header *)0)->field)            \
    }

/* SOP Class UID and SOP Instance UID stay first: fill_header checks them right after them. */
const StringAttr string_attrs[] = {
    STRING_ATTR(DCM_SOPClassUID, "SOPClassUID", sop_class_uid),
    STRING_ATTR(DCM_SOPInstanceUID, "SOPInstanceUID", sop_instance_uid),
    STRING_ATTR(DCM_StudyInstanceUID, "StudyInstanceUID", study_instance_uid),
    STRING_ATTR(DCM_SeriesInstanceUID, "SeriesInstanceUID", series_instance_uid),
    STRING_ATTR(DCM_PatientID, "PatientID", patient_id),
    STRING_ATTR(DCM_IssuerOfPatientID, "IssuerOfPatientID", issuer_of_patient_id),
    STRING_ATTR(DCM_PatientName, "PatientName", patient_name),
    STRING_ATTR(DCM_PatientBirthDate, "PatientBirthDate", patient_birth_date),
    STRING_ATTR(DCM_PatientSex, "PatientSex", patient_sex),
    STRING_ATTR(DCM_StudyDate, "StudyDate", study_date),
    STRING_ATTR(DCM_StudyTime, "StudyTime", study_time),
    STRING_ATTR(DCM_AccessionNumber, "AccessionNumber", accession_number),
    STRING_ATTR(DCM_StudyDescription, "StudyDescription", study_description),
    STRING_ATTR(DCM_SeriesDescription, "SeriesDescription", series_description),
    STRING_ATTR(DCM_Modality, "Modality", modality),
    STRING_ATTR(DCM_BodyPartExamined, "BodyPartExamined", body_part_examined),
    STRING_ATTR(DCM_ViewPosition, "ViewPosition", view_position),
    STRING_ATTR(DCM_Laterality, "Laterality", laterality),
    STRING_ATTR(DCM_Manufacturer, "Manufacturer", manufacturer),
    STRING_ATTR(DCM_InstitutionName, "InstitutionName", institution_name),
    STRING_ATTR(DCM_PhotometricInterpretation, "PhotometricInterpretation",
                photometric_interpretation),
    STRING_ATTR(DCM_SpecificCharacterSet, "SpecificCharacterSet", specific_character_set),
};

/* Values longer than this are not even loaded when repairing (a deferred 1 GB "name"). */
const Uint32 REPAIR_LOAD_MAX = 16 * 1024;

/* Record a repaired attribute in h (NULL: strict mode, never called). */
__attribute__((format(printf, 4, 5))) void note_repair(dicom_header *h, const char *name,
                                                      const DcmTagKey &tag, const char *fmt, ...)
{
    h->n_repairs++;
    size_t used = strlen(h->repairs);
    if (used + 2 >= sizeof(h->repairs))
        return;
    int n = snprintf(h->repairs + used, sizeof(h->repairs) - used, "%s%s (%04x,%04x): ",
                     used ? "; " : "", name, tag.getGroup(), tag.getElement());
    if (n < 0 || used + (size_t)n >= sizeof(h->repairs))
        return;
    used += (size_t)n;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->repairs + used, sizeof(h->repairs) - used, fmt, ap);
    va_end(ap);
}

/*
 * Copy the value of a string element (all values, backslashes kept) into dst, removing trailing
 * spaces and NULs. absent/empty -> "". With repair == NULL (UIDs), too long for the field, NUL
 * inside, or not a string VR -> XR_E_INPUT naming the attribute; otherwise those are repaired
 * (cut to the field, cut at the NUL, "") and noted in *repair.
 */
xr_code copy_string(DcmItem &ds, const DcmTagKey &tag, const char *name, char *dst, size_t size,
                    const Source &src, xr_error *err, dicom_header *repair = nullptr)
{
    dst[0] = '\0';
    DcmElement *elem = nullptr;
    if (ds.findAndGetElement(tag, elem).bad() || !elem)
        return XR_OK;
    if (elem->getLengthField() == 0)
        return XR_OK;
    if (!elem->isaString()) {
        if (repair) {
            note_repair(repair, name, tag, "VR %s is not a string VR, ignored",
                        elem->getTag().getVRName());
            return XR_OK;
        }
        return fail(err, XR_E_INPUT, src, "%s (%04x,%04x) has VR %s, not a string VR", name,
                    tag.getGroup(), tag.getElement(), elem->getTag().getVRName());
    }
    /*
     * Refuse before loading a value that cannot fit (a deferred 1 GB "name" would otherwise be
     * read into memory just to be rejected); one padding byte is allowed on top.
     */
    const Uint32 len = elem->getLengthField();
    if (repair && len > REPAIR_LOAD_MAX) {
        note_repair(repair, name, tag, "%" PRIu32 " bytes, ignored", len);
        return XR_OK;
    }
    if (!repair && len > size)
        return fail(err, XR_E_INPUT, src,
                    "value of %s (%04x,%04x) is %" PRIu32 " bytes long but must be at most %zu",
                    name, tag.getGroup(), tag.getElement(), len, size - 1);
    OFString value;
    OFCondition cond = elem->getOFStringArray(value, OFTrue /* normalize padding */);
    if (cond.bad() && repair) {
        note_repair(repair, name, tag, "unreadable value, ignored");
        return XR_OK;
    }
    if (cond.bad()) {
        xr_error_detail(err, "DCMTK condition %04x:%04x: %s", (unsigned)cond.module(),
                        (unsigned)cond.code(), cond.text());
        return fail(err, XR_E_INPUT, src, "cannot read the value of %s (%04x,%04x)", name,
                    tag.getGroup(), tag.getElement());
    }
    size_t n = value.length();
    const char *p = value.c_str();
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\0'))
        n--;
    if (repair) {
        const char *nul = static_cast<const char *>(memchr(p, '\0', n));
        if (nul) {
            note_repair(repair, name, tag, "NUL byte inside, cut at %zu bytes", (size_t)(nul - p));
            n = (size_t)(nul - p);
        }
        if (n >= size) {
            note_repair(repair, name, tag, "%zu bytes, cut to %zu", n, size - 1);
            n = size - 1;
        }
    }
    if (n >= size)
        return fail(err, XR_E_INPUT, src,
                    "value of %s (%04x,%04x) is %zu bytes long but must be at most %zu", name,
                    tag.getGroup(), tag.getElement(), n, size - 1);
    if (memchr(p, '\0', n))
        return fail(err, XR_E_INPUT, src, "value of %s (%04x,%04x) contains a NUL byte", name,
                    tag.getGroup(), tag.getElement());
    memcpy(dst, p, n);
    dst[n] = '\0';
    return XR_OK;
}

/* US attribute: absent or empty -> dflt. Wrong VR -> XR_E_INPUT. */
xr_code get_us(DcmItem &ds, const DcmTagKey &tag, const char *name, uint16_t dflt, uint16_t *ret,
               const Source &src, xr_error *err, dicom_header *repair)
{
    *ret = dflt;
    DcmElement *elem = nullptr;
    if (ds.findAndGetElement(tag, elem).bad() || !elem || elem->getLengthField() == 0)
        return XR_OK;
    if (repair) {
        Uint16 v = 0;
        if (elem->ident() != EVR_US || elem->getUint16(v, 0).bad()) {
            note_repair(repair, name, tag, "not a readable US value, ignored");
            return XR_OK;
        }
        *ret = v;
        return XR_OK;
    }
    if (elem->ident() != EVR_US)
        return fail(err, XR_E_INPUT, src, "%s (%04x,%04x) has VR %s but must be US", name,
                    tag.getGroup(), tag.getElement(), elem->getTag().getVRName());
    Uint16 v = 0;
    if (elem->getUint16(v, 0).bad())
        return fail(err, XR_E_INPUT, src, "cannot read the value of %s (%04x,%04x)", name,
                    tag.getGroup(), tag.getElement());
    *ret = v;
    return XR_OK;
}

/* IS attribute (first value): absent or empty -> dflt; outside [min, max] or not a number -> error.
 */
xr_code get_is_strict(DcmItem &ds, const DcmTagKey &tag, const char *name, int64_t dflt,
                      int64_t min, int64_t max, int64_t *ret, const Source &src, xr_error *err)
{
    *ret = dflt;
    DcmElement *elem = nullptr;
    if (ds.findAndGetElement(tag, elem).bad() || !elem || elem->getLengthField() == 0)
        return XR_OK;
    if (elem->getLengthField() > 64)
        return fail(err, XR_E_INPUT, src,
                    "value of %s (%04x,%04x) is %" PRIu32 " bytes long but must be at most 12",
                    name, tag.getGroup(), tag.getElement(), elem->getLengthField());
    OFString value;
    if (!elem->isaString() || elem->getOFString(value, 0, OFTrue).bad())
        return fail(err, XR_E_INPUT, src, "cannot read the value of %s (%04x,%04x)", name,
                    tag.getGroup(), tag.getElement());
    const char *s = value.c_str();
    while (*s == ' ')
        s++;
    if (*s == '\0')
        return XR_OK;
    char *end = nullptr;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    while (end && *end == ' ')
        end++;
    if (errno != 0 || end == s || !end || *end != '\0' || v < min || v > max)
        return fail(err, XR_E_INPUT, src,
                    "invalid value of %s (%04x,%04x): \"%s\" (must be an integer in [%" PRId64
                    ", %" PRId64 "])",
                    name, tag.getGroup(), tag.getElement(), value.c_str(), min, max);
    *ret = v;
    return XR_OK;
}

/* IS attribute, repaired: a malformed value becomes dflt and is noted. */
xr_code get_is(DcmItem &ds, const DcmTagKey &tag, const char *name, int64_t dflt, int64_t min,
               int64_t max, int64_t *ret, const Source &src, xr_error *err, dicom_header *repair)
{
    xr_error local = XR_ERROR_INIT;
    if (get_is_strict(ds, tag, name, dflt, min, max, ret, src, &local) == XR_OK)
        return XR_OK;
    (void)err;
    *ret = dflt;
    /* local.msg names the value and the range; keep its tail after the file name. */
    const char *why = strstr(local.msg, "invalid value");
    note_repair(repair, name, tag, "%s, ignored", why ? why : "malformed value");
    return XR_OK;
}

/* ts: the transfer syntax when the meta header was not parsed (an inflated data set), else NULL */
xr_code fill_header(DcmFileFormat &ff, const Source &src, const char *ts, dicom_header *ret,
                    xr_error *err)
{
    DcmDataset *ds = ff.getDataset();
    DcmMetaInfo *meta = ff.getMetaInfo();
    if (!ds)
        return fail(err, XR_E_INTERNAL, src, "DCMTK returned no data set");

    /* Build in a local copy: out-params are written only on success. */
    dicom_header h;
    memset(&h, 0, sizeof(h));
    xr_code rc;
    for (const StringAttr &a : string_attrs) {
        /* The four UIDs come first in the table and are strict; the rest is repaired. */
        bool strict = &a < &string_attrs[4];
        rc = copy_string(*ds, a.tag, a.name, reinterpret_cast<char *>(&h) + a.offset, a.size, src,
                         err, strict ? nullptr : &h);
        if (rc != XR_OK)
            return rc;
        /* Garbage is called garbage, not "too long" or "lacks a UID". */
        if (&a == &string_attrs[1] && h.sop_class_uid[0] == '\0' && h.sop_instance_uid[0] == '\0')
            return fail(err, XR_E_INPUT, src,
                        "not a DICOM file: neither SOP Class UID (0008,0016) nor SOP Instance "
                        "UID (0008,0018) in the data set");
    }
    /* DX objects carry the side in Image Laterality; Laterality is the series-level one. */
    if (h.laterality[0] == '\0') {
        rc = copy_string(*ds, DCM_ImageLaterality, "ImageLaterality", h.laterality,
                         sizeof(h.laterality), src, err, &h);
        if (rc != XR_OK)
            return rc;
    }

    /* Meta header transfer syntax; for a bare data set, the one DCMTK detected. */
    if (ts)
        snprintf(h.transfer_syntax_uid, sizeof(h.transfer_syntax_uid), "%s", ts);
    else if (meta) {
        rc = copy_string(*meta, DCM_TransferSyntaxUID, "TransferSyntaxUID", h.transfer_syntax_uid,
                         sizeof(h.transfer_syntax_uid), src, err);
        if (rc != XR_OK)
            return rc;
    }
    if (h.transfer_syntax_uid[0] == '\0') {
        DcmXfer xfer(ds->getOriginalXfer());
        if (xfer.getXfer() != EXS_Unknown)
            snprintf(h.transfer_syntax_uid, sizeof(h.transfer_syntax_uid), "%s", xfer.getXferID());
    }

    int64_t v;
    if ((rc = get_is(*ds, DCM_SeriesNumber, "SeriesNumber", -1, INT32_MIN, INT32_MAX, &v, src,
                     err, &h)) != XR_OK)
        return rc;
    h.series_number = (int32_t)v;
    if ((rc = get_is(*ds, DCM_InstanceNumber, "InstanceNumber", -1, INT32_MIN, INT32_MAX, &v, src,
                     err, &h)) != XR_OK)
        return rc;
    h.instance_number = (int32_t)v;
    if ((rc = get_is(*ds, DCM_NumberOfFrames, "NumberOfFrames", 1, 1, INT32_MAX, &v, src, err, &h)) !=
        XR_OK)
        return rc;
    h.number_of_frames = (uint32_t)v;

    uint16_t u;
    if ((rc = get_us(*ds, DCM_Rows, "Rows", 0, &u, src, err, &h)) != XR_OK)
        return rc;
    h.rows = u;
    if ((rc = get_us(*ds, DCM_Columns, "Columns", 0, &u, src, err, &h)) != XR_OK)
        return rc;
    h.columns = u;
    if ((rc = get_us(*ds, DCM_BitsAllocated, "BitsAllocated", 0, &h.bits_allocated, src, err, &h)) !=
        XR_OK)
        return rc;
    if ((rc = get_us(*ds, DCM_BitsStored, "BitsStored", 0, &h.bits_stored, src, err, &h)) != XR_OK)
        return rc;
    if ((rc = get_us(*ds, DCM_SamplesPerPixel, "SamplesPerPixel", 0, &h.samples_per_pixel, src,
                     err, &h)) != XR_OK)
        return rc;

    h.has_pixel_data = ds->tagExists(DCM_PixelData, OFFalse);

    *ret = h;
    return XR_OK;
}

/*
 * What a deflated data set may inflate to: the largest object the daemon accepts at all
 * (dicom.max_object_bytes is bounded by it), so any object a peer could have sent uncompressed
 * still reads; inflating stops there, and a few KB claiming a 4 GB element no longer reach
 * DCMTK's unbounded allocation (DCMTK then reads lengths against the inflated file's size).
 */
const uint64_t HEADER_INFLATE_MAX_BYTES = XR_OBJECT_MAX_BYTES;

/* Closes the inflated memfd on every way out, exceptions included. */
struct FdGuard {
    int fd = -1;
    ~FdGuard()
    {
        if (fd >= 0)
            close(fd);
    }
};

/*
 * Parse the object readable at fd, which DCMTK opens by path (the file itself, or
 * /proc/self/fd/N for a memfd), and fill ret.
 */
xr_code read_object(int fd, const char *path, const Source &src, dicom_header *ret, xr_error *err)
{
    FdGuard inflated;
    xr_code rc = inflate_data_set(fd, HEADER_INFLATE_MAX_BYTES, src.path, &inflated.fd, err);
    if (rc != XR_OK)
        return rc;
    DcmFileFormat ff;
    OFCondition cond;
    if (inflated.fd >= 0) {
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", inflated.fd);
        cond = ff.loadFile(OFFilename(proc), EXS_LittleEndianExplicit, EGL_noChange,
                           DCM_MaxReadLength, ERM_dataset);
    } else {
        cond = ff.loadFile(OFFilename(path), EXS_Unknown, EGL_noChange, DCM_MaxReadLength,
                           ERM_autoDetect);
    }
    if (cond.bad()) {
        parse_failure(err, src, cond);
        return XR_E_INPUT;
    }
    /* before inflated closes: values longer than DCM_MaxReadLength load from the file */
    return fill_header(ff, src,
                       inflated.fd >= 0 ? UID_DeflatedExplicitVRLittleEndianTransferSyntax
                                        : nullptr,
                       ret, err);
}

} // namespace

xr_code dicom_header_read(const char *path, dicom_header *ret, xr_error *err) noexcept
{
    DICOM_API_BEGIN
    if (!path || !ret) {
        assert(!"dicom_header_read: NULL argument");
        return xr_error_set(err, XR_E_INTERNAL, "dicom_header_read called with a NULL argument");
    }
    const Source src = {path};

    /* Our own open first: errno for the caller, and a clear word for directories/empty files. */
    FdGuard file;
    file.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (file.fd < 0)
        return xr_error_errno(err, errno, "could not open \"%s\"", path);
    struct stat st;
    if (fstat(file.fd, &st) != 0)
        return xr_error_errno(err, errno, "could not stat \"%s\"", path);
    if (S_ISDIR(st.st_mode))
        return xr_error_errno(err, EISDIR, "could not read \"%s\"", path);
    if (!S_ISREG(st.st_mode)) /* a FIFO or /dev/zero would never end */
        return fail(err, XR_E_INPUT, src, "not a regular file");
    if (st.st_size == 0)
        return fail(err, XR_E_INPUT, src, "not a DICOM file: the file is empty");
    return read_object(file.fd, path, src, ret, err);
    DICOM_API_END(err)
}

xr_code dicom_header_read_buffer(const void *data, size_t n, dicom_header *ret,
                                 xr_error *err) noexcept
{
    DICOM_API_BEGIN
    if ((!data && n > 0) || !ret) {
        assert(!"dicom_header_read_buffer: NULL argument");
        return xr_error_set(err, XR_E_INTERNAL,
                            "dicom_header_read_buffer called with a NULL argument");
    }
    const Source src = {nullptr};
    if (n == 0)
        return fail(err, XR_E_INPUT, src, "not a DICOM file: the data is empty");
    if (n > (size_t)INT64_MAX)
        return fail(err, XR_E_LIMIT, src, "buffer of %zu bytes is too large", n);

    /*
     * Parse through a memfd rather than DcmInputBufferStream: on a buffer stream DCMTK 3.6.7
     * cannot defer loading long values, so it allocates whatever length an element claims
     * (4 GB for 4 KB of garbage) before finding that the bytes are not there. A file stream
     * checks the length against the bytes left first.
     */
    FdGuard mem; /* closed after read_object: values longer than DCM_MaxReadLength load from it */
    mem.fd = memfd_create("dicom-header", MFD_CLOEXEC);
    if (mem.fd < 0)
        return xr_error_errno(err, errno, "could not create a memory file");
    const char *p = static_cast<const char *>(data);
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(mem.fd, p + done, n - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return xr_error_errno(err, errno, "could not fill a memory file");
        }
        done += (size_t)w;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", mem.fd);
    return read_object(mem.fd, path, src, ret, err);
    DICOM_API_END(err)
}
