/*
 * Process-wide DCMTK set-up: data dictionary check, codec registration, DCMTK's oflog routed into
 * xr_log, and the small helpers every dicom-*.cpp file shares (condition -> xr_error, the lock
 * around dcmExternalSocketHandle, UID names).
 *
 * Logging: DCMTK logs through oflog (a log4cplus fork) with its own levels. dicom_global_init()
 * replaces the root logger's appenders with one that hands every event to xr_log at debug level,
 * prefixed with DCMTK's level ("dcmtk WARN: ..."), so a DCMTK warning never reaches the journal
 * above debug (STYLE.md 9: rooms never log above debug). DCMTK's own threshold is INFO: its INFO
 * lines (one per association event or message) are cheap, its DEBUG level dumps whole PDUs.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <mutex>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdict.h"
#include "dcmtk/dcmdata/dcrledrg.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "dcmtk/dcmjpeg/djdecode.h"
#include "dcmtk/dcmjpls/djdecode.h"
#include "dcmtk/dcmnet/assoc.h"
#include "dcmtk/dcmnet/dul.h"
#include "dcmtk/oflog/appender.h"
#include "dcmtk/oflog/logger.h"
#include "dcmtk/oflog/nullap.h"
#include "dcmtk/oflog/oflog.h"
#include "dcmtk/oflog/spi/logevent.h"

#include "xr-log.h"

#include "dicom-internal.hpp"

namespace xrdicom
{

static std::mutex external_socket_mutex;

void external_socket_lock()
{
    external_socket_mutex.lock();
}

void external_socket_unlock()
{
    external_socket_mutex.unlock();
}

void condition_text(const OFCondition &cond, char *buf, size_t n)
{
    if (n == 0)
        return;
    const char *text = cond.text();
    snprintf(buf, n, "%s", text ? text : "unknown DCMTK condition");
    /* "Invalid stream" -> "invalid stream", but keep "DIMSE ..." and "TCP ..." as they are. */
    if (buf[0] >= 'A' && buf[0] <= 'Z' && buf[1] >= 'a' && buf[1] <= 'z')
        buf[0] = (char)(buf[0] - 'A' + 'a');
}

xr_code error_from_condition(xr_error *err, xr_code code, const OFCondition &cond, const char *fmt,
                             ...)
{
    if (!err)
        return code;
    char prefix[XR_ERROR_MSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    char text[XR_ERROR_MSG_BYTES];
    condition_text(cond, text, sizeof(text));
    xr_error_set(err, code, "%s: %s", prefix, text);
    xr_error_detail(err, "DCMTK condition %04x:%04x: %s", (unsigned)cond.module(),
                    (unsigned)cond.code(), cond.text() ? cond.text() : "");
    return code;
}

/* oflog appender that forwards DCMTK's log events to xr_log at debug level. */
class XrLogAppender : public dcmtk::log4cplus::Appender
{
  public:
    XrLogAppender()
    {
    }
    ~XrLogAppender() override
    {
        destructorImpl();
    }
    void close() override
    {
        closed = true;
    }

  protected:
    void append(const dcmtk::log4cplus::spi::InternalLoggingEvent &event) override
    {
        if (!xr_log_enabled(XR_LOG_DEBUG))
            return;
        const char *level = "TRACE";
        const dcmtk::log4cplus::LogLevel ll = event.getLogLevel();
        if (ll >= dcmtk::log4cplus::FATAL_LOG_LEVEL)
            level = "FATAL";
        else if (ll >= dcmtk::log4cplus::ERROR_LOG_LEVEL)
            level = "ERROR";
        else if (ll >= dcmtk::log4cplus::WARN_LOG_LEVEL)
            level = "WARN";
        else if (ll >= dcmtk::log4cplus::INFO_LOG_LEVEL)
            level = "INFO";
        else if (ll >= dcmtk::log4cplus::DEBUG_LOG_LEVEL)
            level = "DEBUG";
        xr_log_write(XR_LOG_DEBUG, "dcmtk %s: %s", level, event.getMessage().c_str());
    }
};

static void route_logging(bool to_xr_log)
{
    dcmtk::log4cplus::Logger root = dcmtk::log4cplus::Logger::getRoot();
    root.removeAllAppenders();
    if (to_xr_log) {
        root.addAppender(dcmtk::log4cplus::SharedAppenderPtr(new XrLogAppender()));
        root.setLogLevel(dcmtk::log4cplus::INFO_LOG_LEVEL);
    } else {
        /* An appender-less logger makes log4cplus complain on stderr; a null one keeps quiet. */
        root.addAppender(dcmtk::log4cplus::SharedAppenderPtr(new dcmtk::log4cplus::NullAppender()));
        root.setLogLevel(dcmtk::log4cplus::OFF_LOG_LEVEL);
    }
}

static bool global_initialized;

xr_code fail(xr_error *err, xr_code code, const Source &src, const char *fmt, ...)
{
    if (!err)
        return code;
    va_list ap;
    va_start(ap, fmt);
    xr_error_setv(err, code, fmt, ap);
    va_end(ap);
    if (src.path)
        xr_error_prefix(err, "\"%s\": ", src.path);
    return code;
}

void parse_failure(xr_error *err, const Source &src, const OFCondition &cond)
{
    const char *why;
    char text[256];
    if (cond == EC_StreamNotifyClient || cond == EC_EndOfStream)
        why = "the data ends inside an element (truncated, or not DICOM)";
    else if (cond == EC_InvalidStream)
        why = "invalid stream (truncated meta header, or not DICOM)";
    else {
        condition_text(cond, text, sizeof(text));
        why = text;
    }
    fail(err, XR_E_INPUT, src, "not a DICOM file: %s", why);
    xr_error_detail(err, "DCMTK condition %04x:%04x: %s", (unsigned)cond.module(),
                    (unsigned)cond.code(), cond.text());
}

} // namespace xrdicom

using namespace xrdicom;

xr_code dicom_global_init(xr_error *err) noexcept
{
    DICOM_API_BEGIN
    if (global_initialized)
        return XR_OK;

    /* First, so that whatever DCMTK says while loading the dictionary is routed too. */
    route_logging(true);

    if (!dcmDataDict.isDictionaryLoaded()) {
        const char *env = getenv(DCM_DICT_ENVIRONMENT_VARIABLE);
        xr_error_set(err, XR_E_CONFIG, "cannot load the DICOM data dictionary");
        xr_error_detail(err, "%s is %s%s%s; the built-in default is \"%s\"",
                        DCM_DICT_ENVIRONMENT_VARIABLE, env ? "\"" : "", env ? env : "not set",
                        env ? "\"" : "", DCM_DICT_DEFAULT_PATH);
        return XR_E_CONFIG;
    }

    /* Decoders for reading compressed pixel data later (JPEG 2000 has none in DCMTK 3.6.7). */
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
    DcmRLEDecoderRegistration::registerCodecs();

    /*
     * The SCP reports numeric peer addresses; DCMTK would otherwise do a reverse DNS lookup per
     * association (and only understands IPv4 there).
     */
    dcmDisableGethostbyaddr.set(OFTrue);

    /*
     * DCMTK's first network creation initializes its upper-layer state machine tables and sets
     * SIGPIPE to SIG_IGN, without a lock. Do it here, before any thread exists.
     */
    T_ASC_Network *net = nullptr;
    OFCondition cond = ASC_initializeNetwork(NET_REQUESTOR, 0, 30, &net);
    if (cond.bad())
        return error_from_condition(err, XR_E_INTERNAL, cond,
                                    "could not initialize the DICOM network layer");
    (void)ASC_dropNetwork(&net);

    global_initialized = true;
    return XR_OK;
    DICOM_API_END(err)
}

void dicom_global_done(void) noexcept
{
    try {
        if (!global_initialized)
            return;
        DJDecoderRegistration::cleanup();
        DJLSDecoderRegistration::cleanup();
        DcmRLEDecoderRegistration::cleanup();
        route_logging(false);
        global_initialized = false;
    } catch (...) {
        /* nothing useful to do at exit */
    }
}

const char *dicom_uid_name(const char *uid) noexcept
{
    if (!uid || !*uid)
        return NULL;
    try {
        return dcmFindNameOfUID(uid, NULL);
    } catch (...) {
        return NULL;
    }
}
