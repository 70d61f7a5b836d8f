/*
 * The storage SCP: accepts associations, answers C-ECHO, and receives C-STORE data sets
 * bit-preserving into files in tmp_dir, handing each file to the caller's on_store.
 *
 * DESIGN
 *
 * Threads. dicom_scp_run() is the accept loop, on the caller's thread: poll() on the listening
 * socket and an eventfd that dicom_scp_stop() writes, so a stop is seen at once and nothing
 * sleep-polls. Each accepted TCP connection gets its own detached thread ("dicom-assoc") that
 * reads the A-ASSOCIATE-RQ, negotiates, and serves DIMSE messages until release or abort. A peer
 * that connects and stays silent therefore only ties up its own thread (for acse_timeout_s), not
 * the accept loop; DCMTK's DcmSCPPool reads the request on its listening thread and would.
 * run() returns after a stop once the thread count is back to zero (condition variable).
 *
 * Why not DcmSCPPool. In DCMTK 3.6.7 the pool binds its port inside listen(), i.e. in run(), not
 * in open(); it can only bind 0.0.0.0; and its stopAfterCurrentAssociations() is noticed only
 * when ASC_receiveAssociation returns (its timeout in non-blocking mode, the next connection in
 * blocking mode). We keep DCMTK for everything above TCP: each connection thread runs a
 * DcmThreadSCP subclass (negotiation, DIMSE loop, release/abort handling).
 *
 * Handing an accepted socket to DCMTK. We bind and accept ourselves (so bind_address, IPv6 and
 * exact errno messages work). DCMTK 3.6.7 has exactly one way to take over an accepted socket:
 * the process-wide dcmExternalSocketHandle, which DUL reads at the start of
 * ASC_receiveAssociation (meant for inetd mode; dul.h calls it "inherently thread unsafe"). A
 * connection thread takes xrdicom::external_socket_lock(), sets the global to its fd, creates its
 * own acceptor network (with the global set DCMTK creates no listening socket) and calls
 * ASC_receiveAssociation. DCMTK reads the global, then asks the network's transport layer to
 * wrap the socket; our transport layer (HandoffTransportLayer) resets the global and releases the
 * lock right there, before DCMTK waits for the first PDU. So only the hand-over itself is
 * serialized; reading the requests of several peers proceeds in parallel.
 *
 * Receiving. A C-STORE data set goes through DIMSE_receiveDataSetInFile() into our own output
 * stream (FdOutputStream): a meta header written like DIMSE_createFilestream() writes it, then the
 * data set bytes exactly as received, with write(2) on an O_EXCL file, counting bytes against
 * max_object_bytes. When a write fails or the limit is reached the stream stops writing but goes
 * on swallowing the bytes, so the data set is still received to its end, the association stays
 * in step, and we answer A700 (with on_store_failed). A network failure or timeout inside the
 * data set ends the association (DcmSCP aborts it). The partial file is removed in both cases;
 * on_store never sees it.
 *
 * What stock DCMTK 3.6.7 does when the disk fills during a bit-preserving receive
 * (DcmSCP::receiveSTORERequest(filename) and storescp --bit-preserving both use
 * DIMSE_createFilestream + DcmOutputFileStream): the file stream writes through stdio. If a
 * buffered write fails mid-stream (ENOSPC/EFBIG), DIMSE_receiveDataSetInFile discards the rest of
 * the data set and returns "out of resources"; the file is deleted and storescp answers A700 (a
 * DcmSCP subclass that returns that condition from handleIncomingCommand gets its association
 * aborted by DcmSCP::handleAssociation instead). But the last stdio buffer is written only when
 * the stream is destroyed, and that fclose() result is never checked (3.6.7's
 * DcmOutputFileStream has no fclose() method): when only that final flush fails, the truncated
 * file is kept and the SCU is told Success. Measured here with storescp -B under "ulimit -f 512"
 * (SIGXFSZ ignored) and a 525156-byte object: a 524288-byte file and "Received Store Response
 * (Success)". Hence our unbuffered write(2), the checked close(), and every byte counted.
 *
 * Thread rule: dicom_scp_open/run/free from one thread; stop and active from any thread.
 * Callbacks run on the connection threads, several at once.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcmetinf.h"
#include "dcmtk/dcmdata/dcostrma.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/dcmdata/dcvrae.h"
#include "dcmtk/dcmdata/dcvrobow.h"
#include "dcmtk/dcmdata/dcvrsh.h"
#include "dcmtk/dcmdata/dcvrui.h"
#include "dcmtk/dcmdata/dcvrul.h"
#include "dcmtk/dcmnet/assoc.h"
#include "dcmtk/dcmnet/cond.h"
#include "dcmtk/dcmnet/dcmlayer.h"
#include "dcmtk/dcmnet/dcmtrans.h"
#include "dcmtk/dcmnet/dimse.h"
#include "dcmtk/dcmnet/dul.h"
#include "dcmtk/dcmnet/scpthrd.h"

#include "xr-limits.h"
#include "xr-log.h"

#include "dicom-internal.hpp"

using namespace xrdicom;

/* ---------------------------------------------------------------------------------------------
 * What we accept
 */

/*
 * CR, DX and the secondary capture family. Multi-frame Single Bit SC (.7.1) and Multi-frame True
 * Color SC (.7.4) are accepted too: they turn up in X-ray studies (scanned requisitions, screen
 * captures of reports), and refusing their presentation context makes some senders fail the
 * whole study. The pipeline decides later what it does with them.
 */
static const char *const storage_sop_classes[] = {
    UID_ComputedRadiographyImageStorage,                     /* 1.2.840.10008.5.1.4.1.1.1 */
    UID_DigitalXRayImageStorageForPresentation,              /* .1.1.1 */
    UID_DigitalXRayImageStorageForProcessing,                /* .1.1.1.1 */
    UID_SecondaryCaptureImageStorage,                        /* .1.1.7 */
    UID_MultiframeSingleBitSecondaryCaptureImageStorage,     /* .1.1.7.1 */
    UID_MultiframeGrayscaleByteSecondaryCaptureImageStorage, /* .1.1.7.2 */
    UID_MultiframeGrayscaleWordSecondaryCaptureImageStorage, /* .1.1.7.3 */
    UID_MultiframeTrueColorSecondaryCaptureImageStorage,     /* .1.1.7.4 */
    NULL,
};

/*
 * Preferred first. This order only matters when a peer proposes several transfer syntaxes in
 * one presentation context (storescu +C, some PACS): DCMTK then accepts the first of ours that
 * the peer offered. Most senders propose one context per transfer syntax and pick the one that
 * matches the object, which keeps it as it is stored. The order:
 *   1. lossless compression that DCMTK 3.6.7 can decode (JPEG lossless, JPEG-LS lossless, RLE):
 *      an object already in one of these arrives untouched, an uncompressed one at worst costs
 *      the sender a lossless encode, and it takes less disk in the spool;
 *   2. uncompressed: no loss, no codec needed; a lossy original offered with these is sent
 *      decompressed, which loses nothing more;
 *   3. JPEG 2000 lossless: lossless, but DCMTK 3.6.7 has no decoder for it;
 *   4. lossy syntaxes last, so an original that is not lossy is never accepted lossy when the
 *      sender offers anything else.
 */
static const char *const storage_transfer_syntaxes[] = {
    UID_JPEGProcess14SV1TransferSyntax,               /* 1.2.840.10008.1.2.4.70 */
    UID_JPEGProcess14TransferSyntax,                  /* 1.2.840.10008.1.2.4.57 */
    UID_JPEGLSLosslessTransferSyntax,                 /* 1.2.840.10008.1.2.4.80 */
    UID_RLELosslessTransferSyntax,                    /* 1.2.840.10008.1.2.5 */
    UID_LittleEndianExplicitTransferSyntax,           /* 1.2.840.10008.1.2.1 */
    UID_DeflatedExplicitVRLittleEndianTransferSyntax, /* 1.2.840.10008.1.2.1.99 */
    UID_LittleEndianImplicitTransferSyntax,           /* 1.2.840.10008.1.2 */
    UID_BigEndianExplicitTransferSyntax,              /* 1.2.840.10008.1.2.2 */
    UID_JPEG2000LosslessOnlyTransferSyntax,           /* 1.2.840.10008.1.2.4.90 */
    UID_JPEGProcess1TransferSyntax,                   /* 1.2.840.10008.1.2.4.50 */
    UID_JPEGProcess2_4TransferSyntax,                 /* 1.2.840.10008.1.2.4.51 */
    UID_JPEGLSLossyTransferSyntax,                    /* 1.2.840.10008.1.2.4.81 */
    UID_JPEG2000TransferSyntax,                       /* 1.2.840.10008.1.2.4.91 */
    NULL,
};

const char *const *dicom_storage_sop_classes(void) noexcept
{
    return storage_sop_classes;
}

const char *const *dicom_storage_transfer_syntaxes(void) noexcept
{
    return storage_transfer_syntaxes;
}

static bool is_storage_sop_class(const char *uid)
{
    for (const char *const *p = storage_sop_classes; *p; p++)
        if (strcmp(*p, uid) == 0)
            return true;
    return false;
}

/*
 * Connection threads that exist only to answer A-ASSOCIATE-RJ "local limit exceeded" once
 * max_associations are being served. Past these, further connections are closed right after
 * accept(): a flood must not turn into unbounded threads.
 */
#define SCP_REJECT_SLOTS 4u
/* accept() ran out of descriptors or memory: wait this long (or for a stop) before retrying. */
#define SCP_ACCEPT_BACKOFF_MS 100

dicom_scp_params dicom_scp_params_default(void) noexcept
{
    dicom_scp_params p;
    memset(&p, 0, sizeof(p));
    p.ae_title = "XREG";
    p.bind_address = NULL;
    p.port = 11112;
    p.max_associations = 16;
    p.max_pdu_bytes = 65536;
    p.acse_timeout_s = 30;
    p.dimse_timeout_s = 60;
    p.max_object_bytes = 1024ULL * 1024 * 1024;
    p.tmp_dir = NULL;
    return p;
}

/* ---------------------------------------------------------------------------------------------
 * The SCP object
 */

struct dicom_scp {
    std::string ae_title;
    std::string bind_address;
    std::string tmp_dir;
    dicom_scp_params params; /* string members point into the std::strings above */
    char listen_desc[INET6_ADDRSTRLEN + 16] = ""; /* "0.0.0.0:11112", "[::1]:104" */

    int listen_fd = -1;
    int stop_fd = -1; /* eventfd written by dicom_scp_stop */
    DcmSharedSCPConfig dcm_config;

    std::mutex mu;
    std::condition_variable idle;      /* signalled when n_threads drops to 0 */
    unsigned n_threads = 0;            /* connection threads alive; guarded by mu */
    unsigned n_serving = 0;            /* of those, the ones not over the limit; guarded by mu */
    std::atomic<unsigned> n_active{0}; /* copy of n_threads for dicom_scp_active */
    std::atomic<bool> running{false};
    std::atomic<uint64_t> file_counter{0};
};

static std::atomic<uint64_t> next_assoc_id{1};

/* One accepted TCP connection, owned by its thread. */
struct Connection {
    dicom_scp *scp;
    int fd;
    uint64_t id;
    bool over_limit;
    char peer[INET6_ADDRSTRLEN];
};

/* ---------------------------------------------------------------------------------------------
 * Socket hand-over to DCMTK (see DESIGN)
 */

static thread_local bool handoff_held;

static void handoff_acquire(int fd)
{
    external_socket_lock();
    handoff_held = true;
    dcmExternalSocketHandle.set(fd);
}

static void handoff_release()
{
    if (!handoff_held)
        return;
    dcmExternalSocketHandle.set(-1);
    handoff_held = false;
    external_socket_unlock();
}

class HandoffTransportLayer : public DcmTransportLayer
{
  public:
    DcmTransportConnection *createConnection(DcmNativeSocketType sock,
                                             OFBool useSecureLayer) override
    {
        /* DCMTK has copied the global into its association: let the next thread hand over. */
        handoff_release();
        if (useSecureLayer)
            return NULL; /* TLS would wrap DcmTLSTransportLayer here */
        return new DcmTCPConnection(sock);
    }
};

/* ---------------------------------------------------------------------------------------------
 * Writing a received data set
 */

/*
 * Output-stream consumer over a file descriptor with a byte budget. After the first failure
 * (write error or budget exceeded) it stops writing but keeps swallowing bytes and stays "good":
 * DCMTK then receives the data set to its end as usual and the association stays in step. (Had
 * we reported the failure, DIMSE_receiveDataSetInFile would call DIMSE_ignoreDataSet, which, as
 * dimse.cc reads, waits for further PDVs even when the failing fragment was the last one.)
 * The caller checks failed().
 */
class FdConsumer : public DcmConsumer
{
  public:
    FdConsumer(int fd, uint64_t limit) : fd_(fd), limit_(limit)
    {
    }
    OFBool good() const override
    {
        return OFTrue;
    }
    OFCondition status() const override
    {
        return EC_Normal;
    }
    OFBool isFlushed() const override
    {
        return OFTrue;
    }
    offile_off_t avail() const override
    {
        return (offile_off_t)1 << 30;
    }
    offile_off_t write(const void *buf, offile_off_t buflen) override
    {
        if (buflen <= 0 || failed())
            return buflen > 0 ? buflen : 0;
        if ((uint64_t)buflen > limit_ - written_) {
            over_limit_ = true;
            return buflen;
        }
        const char *p = (const char *)buf;
        offile_off_t done = 0;
        while (done < buflen) {
            ssize_t n = ::write(fd_, p + done, (size_t)(buflen - done));
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                errno_ = errno;
                break;
            }
            done += n;
        }
        written_ += (uint64_t)done;
        return buflen;
    }
    void flush() override
    {
    }

    bool failed() const
    {
        return over_limit_ || errno_ != 0;
    }
    uint64_t written() const
    {
        return written_;
    }
    bool over_limit() const
    {
        return over_limit_;
    }
    int write_errno() const
    {
        return errno_;
    }

  private:
    int fd_;
    uint64_t limit_;
    uint64_t written_ = 0;
    bool over_limit_ = false;
    int errno_ = 0;
};

class FdOutputStream : public DcmOutputStream
{
  public:
    FdOutputStream(int fd, uint64_t limit) : DcmOutputStream(&consumer_), consumer_(fd, limit)
    {
    }
    FdConsumer &consumer()
    {
        return consumer_;
    }

  private:
    FdConsumer consumer_;
};

/*
 * The meta header DIMSE_createFilestream() would write, so files look like those of storescp
 * --bit-preserving: media storage SOP class/instance from the command, the accepted transfer
 * syntax, DCMTK's implementation class UID and bit-preserving version name, the calling AE.
 */
static OFCondition write_meta_header(DcmOutputStream &out, const T_DIMSE_C_StoreRQ &req,
                                     const char *transfer_syntax, const char *calling_ae)
{
    DcmMetaInfo meta;
    OFCondition cond = EC_Normal;
    Uint8 version[2] = {0, 1};
    Uint32 zero = 0;
    DcmElement *e;

    e = new DcmUnsignedLong(DCM_FileMetaInformationGroupLength);
    meta.insert(e, OFTrue);
    e->putUint32Array(&zero, 1);
    e = new DcmOtherByteOtherWord(DCM_FileMetaInformationVersion);
    meta.insert(e, OFTrue);
    e->putUint8Array(version, 2);
    e = new DcmUniqueIdentifier(DCM_MediaStorageSOPClassUID);
    meta.insert(e, OFTrue);
    e->putString(req.AffectedSOPClassUID);
    e = new DcmUniqueIdentifier(DCM_MediaStorageSOPInstanceUID);
    meta.insert(e, OFTrue);
    e->putString(req.AffectedSOPInstanceUID);
    e = new DcmUniqueIdentifier(DCM_TransferSyntaxUID);
    meta.insert(e, OFTrue);
    e->putString(transfer_syntax);
    e = new DcmUniqueIdentifier(DCM_ImplementationClassUID);
    meta.insert(e, OFTrue);
    e->putString(OFFIS_IMPLEMENTATION_CLASS_UID);
    e = new DcmShortString(DCM_ImplementationVersionName);
    meta.insert(e, OFTrue);
    e->putString(OFFIS_DTK_IMPLEMENTATION_VERSION_NAME2);
    if (calling_ae && *calling_ae) {
        e = new DcmApplicationEntity(DCM_SourceApplicationEntityTitle);
        meta.insert(e, OFTrue);
        e->putString(calling_ae);
    }
    cond = meta.computeGroupLengthAndPadding(
        EGL_withGL, EPD_noChange, META_HEADER_DEFAULT_TRANSFERSYNTAX, EET_UndefinedLength);
    if (cond.bad())
        return cond;
    meta.transferInit();
    cond = meta.write(out, META_HEADER_DEFAULT_TRANSFERSYNTAX, EET_ExplicitLength, NULL);
    meta.transferEnd();
    return cond;
}

/* PS3.7 C.1: statuses after which an Error Comment may be sent. */
static bool is_failure_status(uint16_t s)
{
    if (s == 0x0000 || s == 0x0001 || s == 0x0107 || s == 0x0116) /* success, warnings */
        return false;
    if ((s & 0xF000) == 0xB000 || (s & 0xFF00) == 0xFF00 || s == 0xFE00) /* warning, pending */
        return false;
    return true;
}

/* Error Comment is LO: at most 64 characters, no backslash, no control characters. */
static void sanitize_comment(const char *in, char out[65])
{
    size_t n = 0;
    for (; in[n] && n < 64; n++) {
        unsigned char c = (unsigned char)in[n];
        out[n] = (c < 0x20 || c == 0x7f || c == '\\') ? ' ' : (char)c;
    }
    out[n] = '\0';
    while (n > 0 && out[n - 1] == ' ')
        out[--n] = '\0';
}

static void copy_trimmed(char *dst, size_t size, const char *src)
{
    while (*src == ' ')
        src++;
    size_t n = strnlen(src, size - 1);
    while (n > 0 && (src[n - 1] == ' ' || src[n - 1] == '\0'))
        n--;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---------------------------------------------------------------------------------------------
 * One association
 */

class AssocSCP : public DcmThreadSCP
{
  public:
    AssocSCP(Connection &conn, T_ASC_Association *assoc)
        : conn_(conn), scp_(*conn.scp), assoc_(assoc)
    {
        const T_ASC_Parameters *p = assoc->params;
        copy_trimmed(calling_, sizeof(calling_), p->DULparams.callingAPTitle);
        copy_trimmed(called_, sizeof(called_), p->DULparams.calledAPTitle);
        info_.id = conn.id;
        info_.calling_ae = calling_;
        info_.called_ae = called_;
        info_.peer_host = conn.peer;
    }

  protected:
    OFCondition processAssociationRQ() override
    {
        if (conn_.over_limit) {
            refuseAssociation(DCMSCP_TOO_MANY_ASSOCIATIONS);
            return EC_Normal;
        }
        return DcmThreadSCP::processAssociationRQ();
    }

    OFBool checkCalledAETitleAccepted(const OFString &called) override
    {
        char t[XR_AE_TITLE_MAX + 1];
        copy_trimmed(t, sizeof(t), called.c_str());
        return strcmp(t, scp_.ae_title.c_str()) == 0 && called.length() <= XR_AE_TITLE_MAX;
    }

    void refuseAssociation(const DcmRefuseReasonType reason) override
    {
        char text[128];
        switch (reason) {
        case DCMSCP_TOO_MANY_ASSOCIATIONS:
            snprintf(text, sizeof(text), "too many associations (limit %u): local limit exceeded",
                     scp_.params.max_associations);
            break;
        case DCMSCP_CALLED_AE_TITLE_NOT_RECOGNIZED:
            snprintf(text, sizeof(text), "called AE title \"%s\" not recognized", called_);
            break;
        case DCMSCP_CALLING_AE_TITLE_NOT_RECOGNIZED:
            snprintf(text, sizeof(text), "calling AE title \"%s\" not recognized", calling_);
            break;
        case DCMSCP_BAD_APPLICATION_CONTEXT_NAME:
            snprintf(text, sizeof(text), "unsupported application context");
            break;
        case DCMSCP_NO_PRESENTATION_CONTEXTS:
            snprintf(text, sizeof(text), "no acceptable presentation contexts");
            break;
        case DCMSCP_NO_IMPLEMENTATION_CLASS_UID:
            snprintf(text, sizeof(text), "no implementation class UID");
            break;
        default:
            snprintf(text, sizeof(text), "refused (reason %d)", (int)reason);
            break;
        }
        xr_log_debug("[assoc %" PRIu64 " \"%s\"@%s] rejecting association: %s", info_.id, calling_,
                     conn_.peer, text);
        DcmThreadSCP::refuseAssociation(reason);
        event(DICOM_ASSOC_REJECTED, text);
    }

    void notifyAssociationAcknowledge() override
    {
        char text[32];
        snprintf(text, sizeof(text), "%d", ASC_countAcceptedPresentationContexts(assoc_->params));
        xr_log_debug("[assoc %" PRIu64 " \"%s\"@%s] accepted, %s presentation contexts", info_.id,
                     calling_, conn_.peer, text);
        event(DICOM_ASSOC_ACCEPTED, text);
    }

    void notifyReleaseRequest() override
    {
        xr_log_debug("[assoc %" PRIu64 " \"%s\"@%s] released", info_.id, calling_, conn_.peer);
        event(DICOM_ASSOC_RELEASED, NULL);
    }

    void notifyAbortRequest() override
    {
        xr_log_debug("[assoc %" PRIu64 " \"%s\"@%s] aborted by the peer", info_.id, calling_,
                     conn_.peer);
        event(DICOM_ASSOC_ABORTED, "aborted by the peer");
    }

    void notifyDIMSEError(const OFCondition &cond) override
    {
        char text[XR_ERROR_MSG_BYTES];
        char ctext[XR_ERROR_MSG_BYTES - 64];
        condition_text(cond, ctext, sizeof(ctext));
        snprintf(text, sizeof(text), "aborting the association: %s", ctext);
        xr_log_debug("[assoc %" PRIu64 " \"%s\"@%s] %s", info_.id, calling_, conn_.peer, text);
        event(DICOM_ASSOC_ABORTED, text);
    }

    OFCondition handleIncomingCommand(T_DIMSE_Message *msg,
                                      const DcmPresentationContextInfo &pc) override
    {
        /* No exception may unwind through DCMTK's frames: turn it into an abort. */
        try {
            if (msg->CommandField == DIMSE_C_STORE_RQ)
                return handle_store(msg->msg.CStoreRQ, pc);
            OFCondition cond = DcmThreadSCP::handleIncomingCommand(msg, pc);
            if (cond.good() && msg->CommandField == DIMSE_C_ECHO_RQ)
                event(DICOM_ASSOC_ECHO, NULL);
            return cond;
        } catch (const std::bad_alloc &) {
            return EC_MemoryExhausted;
        } catch (...) {
            return makeDcmnetCondition(DIMSEC_RECEIVEFAILED, OF_error,
                                       "unexpected C++ exception while handling a message");
        }
    }

  private:
    void event(dicom_assoc_event ev, const char *text)
    {
        if (scp_.params.on_assoc)
            scp_.params.on_assoc(scp_.params.userdata, &info_, ev, text);
    }

    void store_failed(const char *sop_instance_uid, const xr_error *why)
    {
        xr_log_debug("[assoc %" PRIu64 " \"%s\"@%s] C-STORE of %s failed: %s", info_.id, calling_,
                     conn_.peer, sop_instance_uid, why->msg);
        if (scp_.params.on_store_failed)
            scp_.params.on_store_failed(scp_.params.userdata, &info_, sop_instance_uid, why);
    }

    OFCondition respond(T_ASC_PresentationContextID pcid, const T_DIMSE_C_StoreRQ &req,
                        uint16_t status, const char *comment)
    {
        DcmDataset detail;
        DcmDataset *detail_ptr = NULL;
        if (comment && *comment && is_failure_status(status)) {
            char safe[65];
            sanitize_comment(comment, safe);
            if (safe[0] && detail.putAndInsertString(DCM_ErrorComment, safe).good())
                detail_ptr = &detail;
        }
        return sendSTOREResponse(pcid, req.MessageID, req.AffectedSOPClassUID,
                                 req.AffectedSOPInstanceUID, status, detail_ptr);
    }

    /* Receive and drop a data set we will not store; the association stays in step. */
    OFCondition ignore_data_set()
    {
        DIC_UL bytes = 0, pdvs = 0;
        return DIMSE_ignoreDataSet(assoc_, DIMSE_NONBLOCKING, (int)scp_.params.dimse_timeout_s,
                                   &bytes, &pdvs);
    }

    /* A file being received: closed and removed on every way out unless handed to on_store. */
    struct PartFile {
        int fd = -1;
        std::string path;
        bool handed_over = false;
        ~PartFile()
        {
            if (fd >= 0)
                (void)::close(fd);
            if (!handed_over && !path.empty())
                (void)unlink(path.c_str());
        }
        /* close(2) now; 0 or its errno (NFS and quota report write errors here). */
        int close_now()
        {
            int e = ::close(fd) == 0 ? 0 : errno;
            fd = -1;
            return e;
        }
    };

    /* Create "rcv-<pid>-<assoc>-<msg>-<n>.part" with O_EXCL; -1 and errno on failure. */
    int create_part_file(uint16_t message_id, std::string &path)
    {
        for (int attempt = 0; attempt < 16; attempt++) {
            char name[128];
            snprintf(name, sizeof(name), "/rcv-%ld-%" PRIu64 "-%u-%" PRIu64 ".part", (long)getpid(),
                     info_.id, (unsigned)message_id, scp_.file_counter.fetch_add(1) + 1);
            path = scp_.tmp_dir + name;
            int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0640);
            if (fd >= 0 || errno != EEXIST)
                return fd;
        }
        errno = EEXIST;
        return -1;
    }

    OFCondition handle_store(T_DIMSE_C_StoreRQ &req, const DcmPresentationContextInfo &pc)
    {
        const T_ASC_PresentationContextID pcid = pc.presentationContextID;
        xr_error why = XR_ERROR_INIT;

        if (req.DataSetType == DIMSE_DATASET_NULL)
            return DIMSE_BADMESSAGE; /* a C-STORE without data set: protocol error, abort */

        if (!is_storage_sop_class(pc.abstractSyntax.c_str()) ||
            pc.abstractSyntax != req.AffectedSOPClassUID) {
            OFCondition cond = ignore_data_set();
            if (cond.bad())
                return cond;
            xr_error_set(&why, XR_E_UNSUPPORTED,
                         "SOP class %s not accepted on presentation context %u (%s)",
                         req.AffectedSOPClassUID, (unsigned)pcid, pc.abstractSyntax.c_str());
            why.dimse = 0x0122;
            store_failed(req.AffectedSOPInstanceUID, &why);
            return respond(pcid, req, 0x0122, "SOP class not supported");
        }

        PartFile part;
        int fd = create_part_file(req.MessageID, part.path);
        if (fd < 0) {
            part.path.clear(); /* not ours: maybe someone else's file (EEXIST) */
            xr_error_errno(&why, errno, "could not create a file in \"%s\"", scp_.tmp_dir.c_str());
            why.dimse = DICOM_STATUS_OUT_OF_RESOURCES;
            OFCondition cond = ignore_data_set();
            store_failed(req.AffectedSOPInstanceUID, &why);
            if (cond.bad())
                return cond;
            return respond(pcid, req, DICOM_STATUS_OUT_OF_RESOURCES, "cannot store the object");
        }

        part.fd = fd;
        FdOutputStream out(fd, scp_.params.max_object_bytes);
        OFCondition cond = write_meta_header(out, req, pc.acceptedTransferSyntax.c_str(), calling_);
        const bool meta_ok = cond.good();
        if (!meta_ok) {
            error_from_condition(&why, XR_E_INTERNAL, cond, "could not build the meta header");
            cond = ignore_data_set();
        }
        T_ASC_PresentationContextID data_pcid = pcid;
        if (meta_ok)
            cond = DIMSE_receiveDataSetInFile(assoc_, DIMSE_NONBLOCKING,
                                              (int)scp_.params.dimse_timeout_s, &data_pcid, &out,
                                              NULL, NULL);
        const int close_errno = part.close_now();
        const FdConsumer &file = out.consumer();

        if (cond.bad()) {
            /* Network failure, timeout or peer abort inside the data set: the association ends
             * (DcmSCP aborts it unless the peer already did). */
            if (meta_ok)
                error_from_condition(&why, XR_E_IO, cond, "could not receive the data set");
            store_failed(req.AffectedSOPInstanceUID, &why);
            return cond;
        }
        if (!meta_ok || file.failed() || close_errno) {
            /* The data set was received to its end (and dropped): answer and carry on. */
            const char *comment = "out of resources, retry later";
            uint16_t status = DICOM_STATUS_OUT_OF_RESOURCES;
            if (!meta_ok) {
                status = DICOM_STATUS_PROCESSING_FAILURE;
                comment = "processing failure";
            } else if (file.over_limit()) {
                xr_error_set(&why, XR_E_LIMIT,
                             "object is larger than the limit of %" PRIu64 " bytes",
                             scp_.params.max_object_bytes);
                comment = "object too large";
            } else {
                xr_error_errno(&why, file.write_errno() ? file.write_errno() : close_errno,
                               "could not write \"%s\"", part.path.c_str());
            }
            why.dimse = status;
            store_failed(req.AffectedSOPInstanceUID, &why);
            return respond(pcid, req, status, comment);
        }
        if (data_pcid != pcid) {
            xr_error_set(&why, XR_E_INPUT,
                         "data set came on presentation context %u, command on %u",
                         (unsigned)data_pcid, (unsigned)pcid);
            store_failed(req.AffectedSOPInstanceUID, &why);
            return makeDcmnetCondition(DIMSEC_INVALIDPRESENTATIONCONTEXTID, OF_error,
                                       "DIMSE: Presentation Contexts of Command and Data Set "
                                       "differ");
        }

        dicom_store_request sreq;
        sreq.assoc = &info_;
        sreq.message_id = req.MessageID;
        sreq.sop_class_uid = req.AffectedSOPClassUID;
        sreq.sop_instance_uid = req.AffectedSOPInstanceUID;
        sreq.transfer_syntax_uid = pc.acceptedTransferSyntax.c_str();
        sreq.path = part.path.c_str();
        sreq.n_bytes = out.consumer().written();
        part.handed_over = true; /* the callback renames or unlinks it, whatever happens next */

        char comment[256];
        memset(comment, 0, sizeof(comment));
        uint16_t status;
        try {
            status = scp_.params.on_store(scp_.params.userdata, &sreq, comment, sizeof(comment));
        } catch (...) {
            /* A C++ callback threw; the file's fate is unknown, so never claim success. */
            status = DICOM_STATUS_PROCESSING_FAILURE;
            snprintf(comment, sizeof(comment), "processing failure");
        }
        comment[sizeof(comment) - 1] = '\0';
        xr_log_debug("[assoc %" PRIu64 " \"%s\"@%s] C-STORE %s (%" PRIu64 " bytes): status %04x",
                     info_.id, calling_, conn_.peer, req.AffectedSOPInstanceUID, sreq.n_bytes,
                     (unsigned)status);
        return respond(pcid, req, status, comment);
    }

    Connection &conn_;
    dicom_scp &scp_;
    T_ASC_Association *assoc_;
    char calling_[XR_AE_TITLE_MAX + 1];
    char called_[XR_AE_TITLE_MAX + 1];
    dicom_assoc_info info_;
};

/* Body of a connection thread: hand the socket to DCMTK, then let AssocSCP serve it. */
static void serve_connection(Connection &conn)
{
    dicom_scp &scp = *conn.scp;
    T_ASC_Network *net = NULL;
    T_ASC_Association *assoc = NULL;
    OFCondition cond;

    handoff_acquire(conn.fd);
    try {
        cond = ASC_initializeNetwork(NET_ACCEPTOR, (int)scp.params.port,
                                     (int)scp.params.acse_timeout_s, &net);
        if (cond.good()) {
            DcmTransportLayer *layer = new HandoffTransportLayer();
            cond = ASC_setTransportLayer(net, layer, 1 /* take over */);
            if (cond.bad())
                delete layer;
        }
        if (cond.good())
            cond = ASC_receiveAssociation(net, &assoc, (long)scp.params.max_pdu_bytes, NULL, NULL,
                                          OFFalse, DUL_NOBLOCK, (int)scp.params.acse_timeout_s);
    } catch (...) {
        if (handoff_held) {
            handoff_release();
            close(conn.fd);
        }
        if (net)
            ASC_dropNetwork(&net);
        throw;
    }
    if (handoff_held) {
        /*
         * DCMTK never got as far as wrapping the socket (getpeername or setsockopt failed): it
         * is still ours. (DCMTK closes it itself only on its TCP-wrapper path, which is off:
         * dcmTCPWrapperDaemonName is never set.)
         */
        handoff_release();
        close(conn.fd);
    }

    if (cond.bad()) {
        /* No event: a connection that closes or times out before its A-ASSOCIATE-RQ is not an
         * association (load balancer probes, port scanners). */
        char text[256];
        condition_text(cond, text, sizeof(text));
        xr_log_debug("[conn %" PRIu64 " @%s] no association request received: %s", conn.id,
                     conn.peer, text);
        if (assoc) {
            ASC_dropAssociation(assoc);
            ASC_destroyAssociation(&assoc);
        }
        if (net)
            ASC_dropNetwork(&net);
        return;
    }

    {
        AssocSCP scp_worker(conn, assoc);
        (void)scp_worker.setSharedConfig(scp.dcm_config);
        cond = scp_worker.run(assoc); /* the destructor drops and frees the association */
        if (cond.bad()) {
            char text[256];
            condition_text(cond, text, sizeof(text));
            xr_log_debug("[assoc %" PRIu64 " @%s] ended with: %s", conn.id, conn.peer, text);
        }
    }
    ASC_dropNetwork(&net);
}

static void *connection_main(void *arg)
{
    Connection *conn = static_cast<Connection *>(arg);
    dicom_scp *scp = conn->scp;
    const bool over = conn->over_limit;
    (void)pthread_setname_np(pthread_self(), "dicom-assoc");
    try {
        serve_connection(*conn);
    } catch (const std::exception &e) {
        xr_log_debug("[conn %" PRIu64 " @%s] unexpected C++ exception: %s", conn->id, conn->peer,
                     e.what());
    } catch (...) {
        xr_log_debug("[conn %" PRIu64 " @%s] unexpected C++ exception", conn->id, conn->peer);
    }
    delete conn;
    /* Last touch of scp: once n_threads is 0, run() may return and the caller free it. */
    std::lock_guard<std::mutex> lock(scp->mu);
    scp->n_threads--;
    if (!over)
        scp->n_serving--;
    scp->n_active.store(scp->n_threads);
    if (scp->n_threads == 0)
        scp->idle.notify_all();
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Open, run, stop, free
 */

static xr_code validate_params(const dicom_scp_params *p, xr_error *err)
{
    if (!p->ae_title || !*p->ae_title)
        return xr_error_set(err, XR_E_CONFIG, "AE title must not be empty");
    size_t ae_len = strlen(p->ae_title);
    if (ae_len > XR_AE_TITLE_MAX)
        return xr_error_set(err, XR_E_CONFIG,
                            "AE title \"%s\" is %zu characters long but must be at most %d",
                            p->ae_title, ae_len, XR_AE_TITLE_MAX);
    for (size_t i = 0; i < ae_len; i++) {
        unsigned char c = (unsigned char)p->ae_title[i];
        if (c < 0x20 || c >= 0x7f || c == '\\')
            return xr_error_set(err, XR_E_CONFIG,
                                "AE title \"%s\" contains a character that is not allowed "
                                "(control character, backslash or non-ASCII)",
                                p->ae_title);
    }
    if (p->ae_title[0] == ' ' || p->ae_title[ae_len - 1] == ' ')
        return xr_error_set(err, XR_E_CONFIG, "AE title \"%s\" must not start or end with a space",
                            p->ae_title);
    if (p->port == 0)
        return xr_error_set(err, XR_E_CONFIG, "port 0 is not supported; use 1..65535");
    if (p->max_associations < 1 || p->max_associations > XR_MAX_ASSOCIATIONS_MAX)
        return xr_error_set(err, XR_E_CONFIG, "max_associations is %u but must be in [1, %d]",
                            p->max_associations, XR_MAX_ASSOCIATIONS_MAX);
    if (p->max_pdu_bytes < ASC_MINIMUMPDUSIZE || p->max_pdu_bytes > ASC_MAXIMUMPDUSIZE)
        return xr_error_set(err, XR_E_CONFIG,
                            "max_pdu_bytes is %" PRIu32 " but must be in [%d, %d]",
                            p->max_pdu_bytes, ASC_MINIMUMPDUSIZE, ASC_MAXIMUMPDUSIZE);
    if (p->acse_timeout_s < 1 || p->acse_timeout_s > 3600)
        return xr_error_set(err, XR_E_CONFIG, "acse_timeout_s is %u but must be in [1, 3600]",
                            p->acse_timeout_s);
    if (p->dimse_timeout_s < 1 || p->dimse_timeout_s > 86400)
        return xr_error_set(err, XR_E_CONFIG, "dimse_timeout_s is %u but must be in [1, 86400]",
                            p->dimse_timeout_s);
    if (p->max_object_bytes < 1024 || p->max_object_bytes > XR_OBJECT_MAX_BYTES)
        return xr_error_set(err, XR_E_CONFIG,
                            "max_object_bytes is %" PRIu64 " but must be in [1024, %llu]",
                            p->max_object_bytes, (unsigned long long)XR_OBJECT_MAX_BYTES);
    if (!p->tmp_dir || !*p->tmp_dir)
        return xr_error_set(err, XR_E_CONFIG, "tmp_dir must be set");
    size_t dir_len = strlen(p->tmp_dir);
    if (dir_len > XR_PATH_MAX)
        return xr_error_set(err, XR_E_CONFIG,
                            "tmp_dir is %zu characters long but must be at most %d", dir_len,
                            XR_PATH_MAX);
    struct stat st;
    if (stat(p->tmp_dir, &st) != 0) {
        xr_error_errno(err, errno, "cannot use tmp_dir \"%s\"", p->tmp_dir);
        if (err)
            err->code = XR_E_CONFIG; /* a configuration problem; errno kept */
        return XR_E_CONFIG;
    }
    if (!S_ISDIR(st.st_mode))
        return xr_error_set(err, XR_E_CONFIG, "tmp_dir \"%s\" is not a directory", p->tmp_dir);
    if (!p->on_store)
        return xr_error_set(err, XR_E_CONFIG, "on_store callback must be set");
    return XR_OK;
}

/* Bind and listen on address:port; fills listen_desc whatever happens. */
static xr_code open_listener(dicom_scp *scp, xr_error *err)
{
    const char *addr = scp->bind_address.empty() ? "0.0.0.0" : scp->bind_address.c_str();
    struct sockaddr_storage ss;
    socklen_t ss_len;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(scp->params.port);
        ss_len = sizeof(*sin);
        snprintf(scp->listen_desc, sizeof(scp->listen_desc), "%s:%u", addr,
                 (unsigned)scp->params.port);
    } else if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(scp->params.port);
        ss_len = sizeof(*sin6);
        snprintf(scp->listen_desc, sizeof(scp->listen_desc), "[%s]:%u", addr,
                 (unsigned)scp->params.port);
    } else {
        return xr_error_set(err, XR_E_CONFIG,
                            "invalid bind address \"%s\": must be a numeric IPv4 or IPv6 address",
                            addr);
    }

    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return xr_error_errno(err, errno, "could not listen on %s", scp->listen_desc);
    int one = 1;
    /* As DCMTK does: a restart must not wait for TIME_WAIT connections of the last run. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, ss_len) != 0 || listen(fd, SOMAXCONN) != 0) {
        int e = errno;
        close(fd);
        return xr_error_errno(err, e, "could not listen on %s", scp->listen_desc);
    }
    scp->listen_fd = fd;
    return XR_OK;
}

static void build_dcmtk_config(dicom_scp *scp)
{
    DcmSCPConfig &cfg = *scp->dcm_config;
    cfg.setAETitle(scp->ae_title.c_str());
    cfg.setRespondWithCalledAETitle(OFFalse);
    cfg.setMaxReceivePDULength(scp->params.max_pdu_bytes);
    cfg.setACSETimeout(scp->params.acse_timeout_s);
    cfg.setDIMSEBlockingMode(DIMSE_NONBLOCKING);
    cfg.setDIMSETimeout(scp->params.dimse_timeout_s);
    cfg.setHostLookupEnabled(OFFalse);
    cfg.setProgressNotificationMode(OFFalse);

    OFList<OFString> echo_ts;
    echo_ts.push_back(UID_LittleEndianExplicitTransferSyntax);
    echo_ts.push_back(UID_BigEndianExplicitTransferSyntax);
    echo_ts.push_back(UID_LittleEndianImplicitTransferSyntax);
    OFCondition cond = cfg.addPresentationContext(UID_VerificationSOPClass, echo_ts);
    if (cond.bad())
        throw std::runtime_error(std::string("adding the Verification context: ") + cond.text());

    OFList<OFString> store_ts;
    for (const char *const *ts = storage_transfer_syntaxes; *ts; ts++)
        store_ts.push_back(*ts);
    for (const char *const *sop = storage_sop_classes; *sop; sop++) {
        cond = cfg.addPresentationContext(*sop, store_ts);
        if (cond.bad())
            throw std::runtime_error(std::string("adding a storage context: ") + cond.text());
    }
}

xr_code dicom_scp_open(const dicom_scp_params *params, dicom_scp **ret_scp, xr_error *err) noexcept
{
    dicom_scp *scp = NULL;
    try {
        if (!params || !ret_scp) {
            assert(!"dicom_scp_open: NULL argument");
            return xr_error_set(err, XR_E_INTERNAL, "dicom_scp_open called with a NULL argument");
        }
        xr_code rc = validate_params(params, err);
        if (rc != XR_OK)
            return rc;

        scp = new dicom_scp();
        scp->ae_title = params->ae_title;
        scp->bind_address = params->bind_address ? params->bind_address : "";
        scp->tmp_dir = params->tmp_dir;
        while (scp->tmp_dir.size() > 1 && scp->tmp_dir.back() == '/')
            scp->tmp_dir.pop_back();
        scp->params = *params;
        scp->params.ae_title = scp->ae_title.c_str();
        scp->params.bind_address = scp->bind_address.c_str();
        scp->params.tmp_dir = scp->tmp_dir.c_str();

        build_dcmtk_config(scp);
        /* Also set by dicom_global_init; numeric peer addresses, no reverse DNS per association. */
        dcmDisableGethostbyaddr.set(OFTrue);

        rc = open_listener(scp, err);
        if (rc != XR_OK) {
            scp = dicom_scp_free(scp);
            return rc;
        }
        scp->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (scp->stop_fd < 0) {
            rc = xr_error_errno(err, errno, "could not create an eventfd");
            scp = dicom_scp_free(scp);
            return rc;
        }
        xr_log_debug("dicom: storage SCP \"%s\" listening on %s", scp->ae_title.c_str(),
                     scp->listen_desc);
        *ret_scp = scp;
        return XR_OK;
    } catch (const std::bad_alloc &) {
        scp = dicom_scp_free(scp);
        return xr_error_set(err, XR_E_NOMEM, "out of memory");
    } catch (const std::exception &e) {
        scp = dicom_scp_free(scp);
        return xr_error_set(err, XR_E_INTERNAL, "unexpected C++ exception: %s", e.what());
    } catch (...) {
        scp = dicom_scp_free(scp);
        return xr_error_set(err, XR_E_INTERNAL, "unexpected C++ exception of unknown type");
    }
}

/* Numeric peer address; IPv4-mapped IPv6 shown as plain IPv4. */
static void peer_name(const struct sockaddr_storage *ss, socklen_t len, char *out, size_t n)
{
    if (getnameinfo((const struct sockaddr *)ss, len, out, (socklen_t)n, NULL, 0, NI_NUMERICHOST) !=
        0) {
        snprintf(out, n, "?");
        return;
    }
    if (strncmp(out, "::ffff:", 7) == 0 && strchr(out + 7, '.'))
        memmove(out, out + 7, strlen(out + 7) + 1);
}

/* Accept one connection and start its thread. Returns false when accept() must back off. */
static bool accept_one(dicom_scp *scp)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    int fd = accept4(scp->listen_fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
            xr_log_debug("dicom: could not accept a connection on %s: %s, retrying in %d ms",
                         scp->listen_desc, strerrordesc_np(e), SCP_ACCEPT_BACKOFF_MS);
            return false;
        }
        /* EAGAIN (the peer went away), EINTR, ECONNABORTED, EPERM (firewall), ...: next one */
        return true;
    }
    if (fd == 0) {
        /* DCMTK takes an external socket of 0 for "none" */
        int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        close(fd);
        if (nfd < 0)
            return false;
        fd = nfd;
    }

    Connection *conn = new (std::nothrow) Connection();
    if (!conn) {
        close(fd);
        return false;
    }
    conn->scp = scp;
    conn->fd = fd;
    conn->id = next_assoc_id.fetch_add(1);
    peer_name(&ss, len, conn->peer, sizeof(conn->peer));

    {
        std::lock_guard<std::mutex> lock(scp->mu);
        if (scp->n_threads >= scp->params.max_associations + SCP_REJECT_SLOTS) {
            xr_log_debug("[conn %" PRIu64 " @%s] closing: %u connections in progress", conn->id,
                         conn->peer, scp->n_threads);
            close(fd);
            delete conn;
            return true;
        }
        conn->over_limit = scp->n_serving >= scp->params.max_associations;
        scp->n_threads++;
        if (!conn->over_limit)
            scp->n_serving++;
        scp->n_active.store(scp->n_threads);
    }

    pthread_attr_t attr;
    pthread_t tid;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&tid, &attr, connection_main, conn);
        (void)pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        xr_log_debug("[conn %" PRIu64 " @%s] could not start a thread: %s, closing", conn->id,
                     conn->peer, strerrordesc_np(rc));
        std::lock_guard<std::mutex> lock(scp->mu);
        scp->n_threads--;
        if (!conn->over_limit)
            scp->n_serving--;
        scp->n_active.store(scp->n_threads);
        close(fd);
        delete conn;
        return false;
    }
    return true;
}

xr_code dicom_scp_run(dicom_scp *scp, xr_error *err) noexcept
{
    DICOM_API_BEGIN
    if (!scp) {
        assert(!"dicom_scp_run: NULL argument");
        return xr_error_set(err, XR_E_INTERNAL, "dicom_scp_run called with a NULL argument");
    }
    if (scp->running.exchange(true))
        return xr_error_set(err, XR_E_INTERNAL, "the storage SCP is already running");
    if (scp->listen_fd < 0) {
        scp->running.store(false);
        return xr_error_set(err, XR_E_INTERNAL, "cannot run a storage SCP that was stopped");
    }

    xr_code rc = XR_OK;
    int timeout_ms = -1;
    for (;;) {
        struct pollfd pfd[2];
        pfd[0].fd = scp->stop_fd;
        pfd[0].events = POLLIN;
        pfd[0].revents = 0;
        pfd[1].fd = scp->listen_fd;
        pfd[1].events = POLLIN;
        pfd[1].revents = 0;
        /* While backing off, watch only the stop event. */
        int n = poll(pfd, timeout_ms < 0 ? 2 : 1, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = xr_error_errno(err, errno, "could not wait for connections on %s",
                                scp->listen_desc);
            break;
        }
        if (pfd[0].revents & POLLIN)
            break;
        if (timeout_ms >= 0) {
            timeout_ms = -1;
            continue;
        }
        if (pfd[1].revents & (POLLERR | POLLNVAL)) {
            rc = xr_error_set(err, XR_E_IO, "listening socket on %s failed", scp->listen_desc);
            break;
        }
        if ((pfd[1].revents & POLLIN) && !accept_one(scp))
            timeout_ms = SCP_ACCEPT_BACKOFF_MS;
    }

    /* Stop accepting: connections still queued in the backlog are refused, not left hanging. */
    close(scp->listen_fd);
    scp->listen_fd = -1;
    {
        std::unique_lock<std::mutex> lock(scp->mu);
        scp->idle.wait(lock, [scp] { return scp->n_threads == 0; });
    }
    scp->running.store(false);
    xr_log_debug("dicom: storage SCP on %s stopped", scp->listen_desc);
    return rc;
    DICOM_API_END(err)
}

void dicom_scp_stop(dicom_scp *scp) noexcept
{
    if (!scp || scp->stop_fd < 0)
        return;
    uint64_t one = 1;
    /* eventfd: only fails when the counter would overflow, i.e. stop was called 2^64 times */
    (void)!write(scp->stop_fd, &one, sizeof(one));
}

unsigned dicom_scp_active(const dicom_scp *scp) noexcept
{
    return scp ? scp->n_active.load() : 0;
}

dicom_scp *dicom_scp_free(dicom_scp *scp) noexcept
{
    if (!scp)
        return NULL;
    assert(!scp->running.load() && "dicom_scp_free while dicom_scp_run is running");
    if (scp->listen_fd >= 0)
        close(scp->listen_fd);
    if (scp->stop_fd >= 0)
        close(scp->stop_fd);
    try {
        delete scp;
    } catch (...) {
        /* destructors of std::string and DcmSharedSCPConfig do not throw */
    }
    return NULL;
}
