/*
 * inflate_data_set: bounded inflation of a deflated (1.2.840.10008.1.2.1.99) data set, shared by
 * the header reader and the pixel decoder (the contract is in dicom-internal.hpp).
 *
 * DCMTK 3.6.7 reads a deflated data set from a stream that cannot seek: it loads every value,
 * and allocates whatever length an element claims (4 GB for a few bytes of input) before it
 * finds the bytes missing; a few MB of zeros can also inflate to many GB. So we inflate it
 * ourselves, into a memfd, refusing past a cap; the caller then lets DCMTK read that as the
 * explicit VR little endian data set it is, from a file, where lengths are checked against the
 * file size and long values stay on disk.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <vector>

#include "dicom-internal.hpp"

namespace
{

const char DEFLATED_TS[] = "1.2.840.10008.1.2.1.99";

uint32_t le16(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}
uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2). */
bool long_vr(const unsigned char *vr)
{
    static const char *const vrs[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                      "SV", "UC", "UN", "UR", "UT", "UV"};
    for (const char *v : vrs)
        if (vr[0] == v[0] && vr[1] == v[1])
            return true;
    return false;
}

/* What the walk over the File Meta Information found. */
struct Meta {
    bool has_ts;       /* a readable Transfer Syntax UID (0002,0010) */
    bool deflated;     /* ... naming the deflated transfer syntax */
    off_t dataset_pos; /* where the data set starts */
};

/*
 * Walk the meta group element by element (always explicit VR little endian, PS3.10 7.1) to find
 * the transfer syntax exactly, so a UID that merely appears in the data set changes nothing. The
 * data set starts after (0002,0000)'s group length when present (as DCMTK reads it), else where
 * group 0002 ends. At most 256 elements: real meta groups have fewer than 10.
 */
void walk_meta(int fd, Meta *m)
{
    memset(m, 0, sizeof(*m));
    off_t pos = 132;
    bool have_gl = false;
    off_t gl_end = 0;
    for (int i = 0; i < 256; i++) {
        unsigned char h[12];
        if (pread(fd, h, 8, pos) != 8 || le16(h) != 0x0002)
            break;
        uint32_t elem = le16(h + 2);
        uint64_t len;
        off_t val;
        if (long_vr(h + 4)) {
            if (pread(fd, h + 8, 4, pos + 8) != 4)
                break;
            len = le32(h + 8);
            val = pos + 12;
        } else {
            len = le16(h + 6);
            val = pos + 8;
        }
        if (len == 0xFFFFFFFFu)
            break; /* undefined length has no place in a meta group: DCMTK judges it */
        if (elem == 0x0000 && i == 0 && len == 4) {
            unsigned char g[4];
            if (pread(fd, g, 4, val) != 4)
                break;
            have_gl = true;
            gl_end = val + 4 + (off_t)le32(g);
        } else if (elem == 0x0010 && len <= 64) {
            char ts[65];
            if (pread(fd, ts, (size_t)len, val) != (ssize_t)len)
                break;
            while (len > 0 && (ts[len - 1] == '\0' || ts[len - 1] == ' '))
                len--;
            ts[len] = '\0';
            m->has_ts = true;
            m->deflated = strcmp(ts, DEFLATED_TS) == 0;
        }
        pos = val + (off_t)len;
    }
    m->dataset_pos = have_gl ? gl_end : pos;
}

} // namespace

namespace xrdicom
{

xr_code inflate_data_set(int fd, uint64_t cap, const char *path, int *ret_fd, xr_error *err)
{
    *ret_fd = -1;
    unsigned char head[4096];
    ssize_t n = pread(fd, head, sizeof(head), 0);
    if (n < 144 || memcmp(head + 128, "DICM", 4) != 0)
        return XR_OK; /* no meta header: DCMTK cannot read it as deflated either */
    Meta m;
    walk_meta(fd, &m);
    if (!m.has_ts) {
        /* Unreadable meta that still names deflate: DCMTK might inflate it unbounded. */
        if (memmem(head + 132, (size_t)n - 132, DEFLATED_TS, sizeof(DEFLATED_TS) - 1))
            return fail(err, XR_E_INPUT, Source{path},
                        "cannot read the File Meta Information of an object that names the "
                        "deflated transfer syntax");
        return XR_OK;
    }
    if (!m.deflated)
        return XR_OK;

    int mfd = memfd_create("dicom-inflated", MFD_CLOEXEC);
    if (mfd < 0)
        return xr_error_errno(err, errno, "could not create a memory file");
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -MAX_WBITS) != Z_OK) {
        close(mfd);
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    }
    int werr = 0;
    std::vector<unsigned char> in(64 * 1024), out(256 * 1024);
    uint64_t total = 0;
    off_t pos = m.dataset_pos;
    int zr = Z_OK;
    while (zr != Z_STREAM_END) {
        ssize_t k = pread(fd, in.data(), in.size(), pos);
        if (k <= 0)
            break; /* truncated: DCMTK will say so */
        pos += k;
        z.next_in = in.data();
        z.avail_in = (uInt)k;
        do {
            z.next_out = out.data();
            z.avail_out = (uInt)out.size();
            zr = inflate(&z, Z_NO_FLUSH);
            size_t got = out.size() - z.avail_out;
            total += got;
            if (total <= cap && got > 0 && write(mfd, out.data(), got) != (ssize_t)got)
                werr = errno ? errno : EIO;
        } while (zr == Z_OK && z.avail_out == 0 && total <= cap && !werr);
        if ((zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) || total > cap || werr)
            break; /* a corrupt stream ends here: DCMTK reports the truncation */
    }
    inflateEnd(&z);
    if (total > cap) {
        close(mfd);
        return fail(err, XR_E_LIMIT, Source{path},
                    "the deflated data set inflates to more than %llu bytes, the limit",
                    (unsigned long long)cap);
    }
    if (werr) {
        close(mfd);
        return xr_error_errno(err, werr, "could not fill a memory file");
    }
    *ret_fd = mfd;
    return XR_OK;
}

} // namespace xrdicom
