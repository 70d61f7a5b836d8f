/*
 * dicom/: DCMTK behind a plain C API. No DCMTK type and no C++ exception crosses this header.
 *
 *     dicom_global_init();                       // once, in main(), before threads
 *     dicom_scp *scp;
 *     dicom_scp_params p = dicom_scp_params_default();
 *     p.ae_title = "XREG"; p.port = 11112; p.tmp_dir = "/var/lib/xreg/spool/tmp";
 *     p.on_store = my_store; p.userdata = ctx;
 *     if (dicom_scp_open(&p, &scp, &err)) ...;   // binds and listens, or fails here
 *     dicom_scp_run(scp, &err);                  // blocks; call from a dedicated thread
 *     ...  dicom_scp_stop(scp);                  // from any thread: run() returns once the
 *                                                // associations in flight have ended
 *     scp = dicom_scp_free(scp);
 *
 *     dicom_header h;
 *     if (dicom_header_read("x.dcm", &h, &err)) ...;   // the tags the registry needs
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

#ifdef __cplusplus
/* Every function here catches all C++ exceptions inside; C++ callers may rely on that. */
#define DICOM_NOEXCEPT noexcept
extern "C" {
#else
#define DICOM_NOEXCEPT
#endif

/* DIMSE status codes used by the SCP (PS3.4 Annex B.2.3, PS3.7 Annex C). */
#define DICOM_STATUS_SUCCESS 0x0000
#define DICOM_STATUS_OUT_OF_RESOURCES 0xA700    /* Refused: Out of Resources */
#define DICOM_STATUS_DATASET_MISMATCH 0xA900    /* Error: Data Set does not match SOP Class */
#define DICOM_STATUS_CANNOT_UNDERSTAND 0xC000   /* Error: Cannot understand */
#define DICOM_STATUS_PROCESSING_FAILURE 0x0110  /* Failure: Processing failure */

/*
 * Route DCMTK's own logging (oflog) to xr_log at debug level, load the data dictionary, register
 * the codecs needed to read compressed objects. Call once from main() before any thread starts.
 * Returns XR_E_CONFIG if the data dictionary cannot be loaded.
 */
__attribute__((warn_unused_result)) xr_code dicom_global_init(xr_error *err) DICOM_NOEXCEPT;
/* Undo dicom_global_init (codec deregistration); call once at exit after all threads ended. */
void dicom_global_done(void) DICOM_NOEXCEPT;

/* ---------------------------------------------------------------------------------------------
 * Storage SCP
 */
typedef struct dicom_scp dicom_scp;

/* Facts about one association; borrowed, valid only during the callback that receives it. */
typedef struct dicom_assoc_info {
    uint64_t id;            /* process-unique association number, starting at 1 */
    const char *calling_ae; /* trimmed of padding */
    const char *called_ae;
    const char *peer_host;  /* numeric address of the peer */
} dicom_assoc_info;

typedef enum dicom_assoc_event {
    DICOM_ASSOC_ACCEPTED,   /* association negotiated; detail = number of accepted contexts */
    DICOM_ASSOC_REJECTED,   /* rejected at negotiation; detail = reason text */
    DICOM_ASSOC_RELEASED,   /* ended by A-RELEASE */
    DICOM_ASSOC_ABORTED,    /* ended by A-ABORT from either side or a network error */
    DICOM_ASSOC_ECHO,       /* a C-ECHO was answered */
    DICOM_ASSOC_EVENT_MAX,
} dicom_assoc_event;

/*
 * Called on the association's thread for each event; text may be NULL. Must not block for long.
 */
typedef void (*dicom_assoc_fn)(void *userdata, const dicom_assoc_info *assoc,
                               dicom_assoc_event event, const char *text);

/* One received C-STORE; all pointers borrowed for the duration of the callback. */
typedef struct dicom_store_request {
    const dicom_assoc_info *assoc;
    uint16_t message_id;
    const char *sop_class_uid;       /* Affected SOP Class UID from the command set */
    const char *sop_instance_uid;    /* Affected SOP Instance UID from the command set */
    const char *transfer_syntax_uid; /* of the accepted presentation context */
    /*
     * A closed file in tmp_dir holding the object as received: a Part-10 file (meta header, then
     * the data set bytes exactly as they came over the network, in transfer_syntax_uid). The file
     * is not yet fsync'd. The callback owns it from now on: it must rename or unlink it.
     */
    const char *path;
    uint64_t n_bytes; /* size of that file */
} dicom_store_request;

/*
 * Decide the fate of a received object and return the DIMSE status to send back. comment (of
 * comment_bytes, NUL-terminated by the callee) may receive a short safe Error Comment (0000,0902),
 * sent only with failure statuses. Called on the association's thread; may block for fsync.
 */
typedef uint16_t (*dicom_store_fn)(void *userdata, const dicom_store_request *req, char *comment,
                                   size_t comment_bytes);

/*
 * Called when a C-STORE could not be received into tmp_dir (write error, disk full, object over
 * max_object_bytes, network failure mid-transfer). The SCP has already removed any partial file
 * and answers A700 when the association is still usable. Optional.
 */
typedef void (*dicom_store_failed_fn)(void *userdata, const dicom_assoc_info *assoc,
                                      const char *sop_instance_uid, const xr_error *why);

typedef struct dicom_scp_params {
    const char *ae_title;       /* called AE title to accept; others are rejected (reason 7) */
    const char *bind_address;   /* numeric IPv4/IPv6 address or NULL/"" for all interfaces */
    uint16_t port;
    unsigned max_associations;  /* concurrent associations; more are rejected (transient) */
    uint32_t max_pdu_bytes;     /* our maximum receive PDU */
    unsigned acse_timeout_s;    /* association negotiation and release */
    unsigned dimse_timeout_s;   /* waiting for the next message / data on an association */
    uint64_t max_object_bytes;  /* refuse larger objects with A700 */
    const char *tmp_dir;        /* where received objects are written; must exist */
    dicom_store_fn on_store;    /* required */
    dicom_store_failed_fn on_store_failed; /* optional */
    dicom_assoc_fn on_assoc;    /* optional */
    void *userdata;
} dicom_scp_params;

/* All defaults: AE "XREG", port 11112, 16 associations, 64 KiB PDU, 30 s/60 s timeouts. */
dicom_scp_params dicom_scp_params_default(void) DICOM_NOEXCEPT;

/*
 * Validate params, bind and listen. Returns XR_E_CONFIG for invalid params, XR_E_IO when the
 * address cannot be bound (in use, permission), with the address and port in the message.
 * params and the strings in it are copied. The result is freed with dicom_scp_free.
 */
__attribute__((warn_unused_result)) xr_code dicom_scp_open(const dicom_scp_params *params,
                                                           dicom_scp **ret_scp,
                                                           xr_error *err) DICOM_NOEXCEPT;
/*
 * Accept and serve associations until dicom_scp_stop, each on its own thread. Returns XR_OK
 * after a stop once every association in flight has ended. Call from one thread only.
 */
__attribute__((warn_unused_result)) xr_code dicom_scp_run(dicom_scp *scp,
                                                          xr_error *err) DICOM_NOEXCEPT;
/* Ask run() to stop accepting and to return once current associations end. Any thread. */
void dicom_scp_stop(dicom_scp *scp) DICOM_NOEXCEPT;
/* Number of associations in progress. Any thread. */
unsigned dicom_scp_active(const dicom_scp *scp) DICOM_NOEXCEPT;
/* Close the socket and free; accepts NULL; returns NULL. Not while run() is running. */
dicom_scp *dicom_scp_free(dicom_scp *scp) DICOM_NOEXCEPT;

/* The SOP classes accepted for storage, NULL-terminated; static storage. */
const char *const *dicom_storage_sop_classes(void) DICOM_NOEXCEPT;
/* The transfer syntaxes accepted for storage, NULL-terminated, preferred first; static. */
const char *const *dicom_storage_transfer_syntaxes(void) DICOM_NOEXCEPT;

/* ---------------------------------------------------------------------------------------------
 * Reading headers
 */

/* Values copied from a data set; empty strings for absent attributes, trailing padding removed. */
typedef struct dicom_header {
    char sop_class_uid[65];
    char sop_instance_uid[65];
    char study_instance_uid[65];
    char series_instance_uid[65];
    char transfer_syntax_uid[65];  /* from the file meta information */
    char patient_id[65];
    char issuer_of_patient_id[65];
    char patient_name[325];        /* PN: up to 64 chars per component group, 5 groups */
    char patient_birth_date[9];    /* YYYYMMDD or "" */
    char patient_sex[17];
    char study_date[9];            /* YYYYMMDD or "" */
    char study_time[17];
    char accession_number[17];
    char study_description[65];
    char series_description[65];
    char modality[17];
    char body_part_examined[17];
    char view_position[17];
    char laterality[17];
    char manufacturer[65];
    char institution_name[65];
    int32_t series_number;   /* -1 if absent */
    int32_t instance_number; /* -1 if absent */
    uint32_t rows;           /* 0 if absent */
    uint32_t columns;
    uint32_t number_of_frames; /* 1 if absent */
    uint16_t bits_allocated;
    uint16_t bits_stored;
    uint16_t samples_per_pixel;
    char photometric_interpretation[17];
    char specific_character_set[65];
    bool has_pixel_data;
} dicom_header;

/*
 * Parse the Part-10 file at path (or a raw data set in implicit VR little endian without meta
 * header) up to, not including, the pixel data, and fill *ret. Values longer than the fields
 * are an XR_E_INPUT error naming the attribute. Returns XR_E_INPUT for a file that is not DICOM
 * ("\"x\": not a DICOM file: ..."), XR_E_IO if it cannot be read.
 */
__attribute__((warn_unused_result)) xr_code dicom_header_read(const char *path, dicom_header *ret,
                                                              xr_error *err) DICOM_NOEXCEPT;
/* Same, from a buffer holding a whole Part-10 file. */
__attribute__((warn_unused_result)) xr_code dicom_header_read_buffer(const void *data, size_t n,
                                                                     dicom_header *ret,
                                                                     xr_error *err) DICOM_NOEXCEPT;
/* Name of a well-known UID ("CR Image Storage"), or NULL. Static storage. */
const char *dicom_uid_name(const char *uid) DICOM_NOEXCEPT;

#ifdef __cplusplus
}
#endif
