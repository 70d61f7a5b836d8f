/*
 * dicom/ private helpers shared by the dicom-*.cpp files: the exception barrier that wraps every
 * exported function, OFCondition -> xr_error, and the lock that serializes DCMTK's
 * dcmExternalSocketHandle global. Only dicom-*.cpp include this file (it pulls in DCMTK).
 */
#pragma once

#include <stdint.h>

#include <exception>
#include <new>

#include "dcmtk/config/osconfig.h" /* DCMTK wants this before any other of its headers */
#include "dcmtk/ofstd/ofcond.h"

#include "xr-error.h"

#include "dicom.h"

/*
 * Exception barrier for exported functions that return xr_code (onnxruntime API_IMPL_BEGIN/END):
 * nothing thrown by DCMTK, the STL or our own C++ escapes into C.
 *
 *     xr_code dicom_x(..., xr_error *err) noexcept
 *     {
 *         DICOM_API_BEGIN
 *         ...
 *         DICOM_API_END(err)
 *     }
 */
#define DICOM_API_BEGIN try {
#define DICOM_API_END(err)                                                                         \
    }                                                                                              \
    catch (const std::bad_alloc &)                                                                 \
    {                                                                                              \
        return xr_error_set((err), XR_E_NOMEM, "out of memory");                                   \
    }                                                                                              \
    catch (const std::exception &e)                                                                \
    {                                                                                              \
        return xr_error_set((err), XR_E_INTERNAL, "unexpected C++ exception: %s", e.what());       \
    }                                                                                              \
    catch (...)                                                                                    \
    {                                                                                              \
        return xr_error_set((err), XR_E_INTERNAL, "unexpected C++ exception of unknown type");     \
    }

namespace xrdicom
{

/*
 * Fill err with code, the formatted message, then ": " and DCMTK's text for cond; the detail
 * keeps DCMTK's module and code ("DCMTK condition 0006:0317: ..."). Returns code.
 */
__attribute__((format(printf, 4, 5))) xr_code
error_from_condition(xr_error *err, xr_code code, const OFCondition &cond, const char *fmt, ...);

/* The DCMTK text of cond with its first letter lowered when it starts a plain word. */
void condition_text(const OFCondition &cond, char *buf, size_t n);

/*
 * dcmExternalSocketHandle is a process-wide DCMTK global ("inherently thread unsafe", dul.h)
 * that DCMTK reads when it creates an acceptor network and at the start of every
 * ASC_receiveAssociation. Every piece of dicom/ that sets it holds this lock from the set until
 * DCMTK has read it back into its own structures (dicom-scp.cpp releases it from inside its
 * transport layer's createConnection). Code that creates a DCMTK acceptor network must hold it.
 */
void external_socket_lock();
void external_socket_unlock();

} // namespace xrdicom

namespace xrdicom
{

/*
 * dicom-j2k.cpp: decode one JPEG 2000 codestream or JP2 file of n bytes into out, which holds
 * rows x columns x samples int32 values (color by pixel), as the codestream stores them (inverse
 * MCT applied, no masking). The codestream's size and component count must match; they are
 * checked before anything large is allocated. XR_E_INPUT for corrupt or mismatching data.
 */
xr_code j2k_decode_frame(const uint8_t *data, size_t n, uint32_t rows, uint32_t columns,
                         uint16_t samples, int32_t *out, xr_error *err);

} // namespace xrdicom

namespace xrdicom
{

/*
 * dicom-deflate.cpp: when the Part-10 object readable at fd names the deflated transfer syntax
 * (1.2.840.10008.1.2.1.99) in its meta header, inflate its data set into a memfd, refusing once
 * it passes cap bytes (XR_E_LIMIT), and return that memfd in *ret_fd (the caller closes it and
 * has DCMTK read it as an explicit VR little endian data set, ERM_dataset, from a file so
 * element lengths are checked against what is there). *ret_fd is -1 for any other object, and
 * for input without a meta header. A corrupt or truncated stream is not an error here: what
 * inflated is returned and DCMTK reports the truncation. path names the input in messages
 * (NULL for buffers).
 */
xr_code inflate_data_set(int fd, uint64_t cap, const char *path, int *ret_fd, xr_error *err);

} // namespace xrdicom

namespace xrdicom
{

/* Where a message names the input: "\"x.dcm\": " for files, nothing for buffers. */
struct Source {
    const char *path; /* NULL for a buffer */
};

/* Fill err (if not NULL) with code and the message, prefixed with the input's name. */
__attribute__((format(printf, 4, 5))) xr_code fail(xr_error *err, xr_code code, const Source &src,
                                                   const char *fmt, ...);

/* XR_E_INPUT "not a DICOM file: <readable reason>" for a DCMTK parse failure; the raw condition
 * goes to the detail. */
void parse_failure(xr_error *err, const Source &src, const OFCondition &cond);

} // namespace xrdicom
