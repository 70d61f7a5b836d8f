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
 * Route DCMTK's own logging (oflog) to xr_log at debug level ("dcmtk WARN: ..."; nothing of DCMTK
 * reaches stderr any more), load the data dictionary, register the decoders needed to read
 * compressed objects (JPEG, JPEG-LS, RLE; DCMTK 3.6.7 has none for JPEG 2000). Also turns off
 * DCMTK's reverse DNS lookups and lets DCMTK set SIGPIPE to SIG_IGN, as its first network
 * initialization does. Call once from main() before any thread starts; a second call does
 * nothing. Returns XR_E_CONFIG if the data dictionary cannot be loaded.
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
    DICOM_ASSOC_ACCEPTED,   /* association negotiated; text = number of accepted contexts ("3") */
    DICOM_ASSOC_REJECTED,   /* rejected at negotiation; text = reason ("called AE title ...") */
    DICOM_ASSOC_RELEASED,   /* ended by A-RELEASE; text NULL */
    DICOM_ASSOC_ABORTED,    /* ended by A-ABORT from either side or a network error; text why */
    DICOM_ASSOC_ECHO,       /* a C-ECHO was answered; text NULL */
    DICOM_ASSOC_EVENT_MAX,
} dicom_assoc_event;

/*
 * Called on the association's thread for each event; text may be NULL. Must not block for long.
 * Several associations call it at once. A TCP connection that closes or times out before sending
 * an A-ASSOCIATE-RQ (load balancer probe, port scan) is no association and gives no event.
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
     * is not yet fsync'd. The callback owns it from now on: it must rename or unlink it. Named
     * "rcv-<pid>-<assoc id>-<message id>-<n>.part", mode 0640 (less the umask); whatever such
     * files a crash leaves behind in tmp_dir are garbage.
     */
    const char *path;
    uint64_t n_bytes; /* size of that file */
} dicom_store_request;

/*
 * Decide the fate of a received object and return the DIMSE status to send back. comment (of
 * comment_bytes, NUL-terminated by the callee) may receive a short safe Error Comment (0000,0902),
 * sent only with failure statuses (not with 0000, warnings or pending), cut to 64 characters,
 * control characters and backslashes replaced by spaces. Called on the association's thread,
 * several at once; may block for fsync.
 */
typedef uint16_t (*dicom_store_fn)(void *userdata, const dicom_store_request *req, char *comment,
                                   size_t comment_bytes);

/*
 * Called when a C-STORE could not be received into tmp_dir (write error, disk full, object over
 * max_object_bytes, network failure mid-transfer). The SCP has already removed any partial file
 * and answers A700 when the association is still usable. Optional. why->code says what:
 *   XR_E_IO with sys_errno (ENOSPC, EFBIG, EIO...): the file could not be created or written; A700
 *   XR_E_LIMIT: the object is larger than max_object_bytes; A700
 *   XR_E_IO with sys_errno 0: the network failed or timed out inside the data set; the
 *     association is aborted, no response is sent
 *   XR_E_UNSUPPORTED: a SOP class sent on a presentation context of another one; 0122
 *   XR_E_INPUT: the data set came on another presentation context than its command; aborted
 *   XR_E_INTERNAL: DCMTK could not build the meta header; 0110
 * why->dimse is the status sent (0 when none was).
 */
typedef void (*dicom_store_failed_fn)(void *userdata, const dicom_assoc_info *assoc,
                                      const char *sop_instance_uid, const xr_error *why);

typedef struct dicom_scp_params {
    const char *ae_title;       /* called AE title to accept; others are rejected (reason 7) */
    const char *bind_address;   /* numeric IPv4/IPv6 address; NULL/"" = 0.0.0.0 (IPv4 only),
                                 * "::" = IPv6 and, as the kernel's bindv6only allows, IPv4 */
    uint16_t port;              /* 1..65535; 0 (any port) is not supported */
    unsigned max_associations;  /* concurrent associations; more are rejected (transient, local
                                 * limit exceeded); past 4 more at once, connections are closed */
    uint32_t max_pdu_bytes;     /* our maximum receive PDU */
    unsigned acse_timeout_s;    /* association negotiation and release */
    unsigned dimse_timeout_s;   /* waiting for the next message / data on an association */
    uint64_t max_object_bytes;  /* refuse larger objects with A700: counts the file written,
                                 * meta header included; the rest is received and dropped */
    const char *tmp_dir;        /* where received objects are written; must exist */
    dicom_store_fn on_store;    /* required */
    dicom_store_failed_fn on_store_failed; /* optional */
    dicom_assoc_fn on_assoc;    /* optional */
    void *userdata;
} dicom_scp_params;

/*
 * All defaults: AE "XREG", all interfaces, port 11112, 16 associations, 64 KiB PDU, 30 s/60 s
 * timeouts, 1 GiB objects. tmp_dir and on_store have no default.
 */
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
 * after a stop once every association in flight has ended. Call from one thread only, and once:
 * the stop closes the listening socket (peers still queued are refused), so a stopped SCP is
 * freed, not run again (XR_E_INTERNAL). A stop that comes before run() makes it return at once.
 */
__attribute__((warn_unused_result)) xr_code dicom_scp_run(dicom_scp *scp,
                                                          xr_error *err) DICOM_NOEXCEPT;
/*
 * Ask run() to stop accepting and to return once current associations end (an idle one ends at
 * dimse_timeout_s at the latest). Any thread; also safe in a signal handler (one write(2)).
 */
void dicom_scp_stop(dicom_scp *scp) DICOM_NOEXCEPT;
/* Number of connections in progress, those being rejected included. Any thread. */
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

/*
 * Values copied from a data set (the top level only, not from sequences); empty strings for
 * absent attributes, padding removed, character set not converted (raw bytes of the value).
 */
typedef struct dicom_header {
    char sop_class_uid[65];
    char sop_instance_uid[65];
    char study_instance_uid[65];
    char series_instance_uid[65];
    char transfer_syntax_uid[65];  /* from the file meta information (detected if it has none) */
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
    char laterality[17];           /* Laterality, else Image Laterality (0020,0062) */
    char manufacturer[65];
    char institution_name[65];
    int32_t series_number;   /* -1 if absent */
    int32_t instance_number; /* -1 if absent */
    uint32_t rows;           /* 0 if absent */
    uint32_t columns;
    uint32_t number_of_frames; /* 1 if absent; present and < 1 is an error */
    uint16_t bits_allocated;
    uint16_t bits_stored;
    uint16_t samples_per_pixel;
    char photometric_interpretation[17];
    char specific_character_set[65];
    bool has_pixel_data;     /* (7FE0,0010) present; its value is never loaded */
    /*
     * Descriptive attributes that were malformed (overlong, wrong VR, not a number) are repaired
     * rather than refused, so that one bad field cannot make an object unregistrable: strings
     * are cut to their field, numbers fall back to their "absent" value. n_repairs counts them;
     * repairs describes the first ones ("PatientBirthDate (0010,0030): 56 bytes, cut to 8").
     * UIDs are never repaired: a malformed UID is an error.
     */
    uint32_t n_repairs;
    char repairs[256];
} dicom_header;

/*
 * Parse the Part-10 file at path (or a raw data set in implicit VR little endian without meta
 * header) and fill *ret. The whole structure is checked, but no value longer than 4 KiB (pixel
 * data) is loaded into memory. Values longer than the fields, IS values that are not integers,
 * US attributes of another VR are XR_E_INPUT errors naming the attribute. Returns XR_E_INPUT for
 * a file that is not DICOM ("\"x\": not a DICOM file: ..."; also for a truncated file, an
 * empty one, one without SOP Class or SOP Instance UID, or one that is not a regular file),
 * XR_E_IO if it cannot be opened. *ret is written only on success. Reentrant.
 */
__attribute__((warn_unused_result)) xr_code dicom_header_read(const char *path, dicom_header *ret,
                                                              xr_error *err) DICOM_NOEXCEPT;
/* Same, from a buffer holding a whole Part-10 file (or bare data set); messages carry no path. */
__attribute__((warn_unused_result)) xr_code dicom_header_read_buffer(const void *data, size_t n,
                                                                     dicom_header *ret,
                                                                     xr_error *err) DICOM_NOEXCEPT;
/* DCMTK's name of a well-known UID ("ComputedRadiographyImageStorage"), or NULL. Static. */
const char *dicom_uid_name(const char *uid) DICOM_NOEXCEPT;

/* ---------------------------------------------------------------------------------------------
 * Pixels: decoding and the grayscale transform
 *
 *     dicom_pixel_limits lim = dicom_pixel_limits_default();
 *     dicom_image img = {0};
 *     if (dicom_image_read("x.dcm", DICOM_FRAMES_FIRST, &lim, &img, &err)) ...;
 *     ... img.pixels[r * img.columns + c] in [0,1], bone bright ...
 *     dicom_image_done(&img);
 *
 * Encodings: implicit/explicit VR little endian, explicit big endian, deflated, JPEG baseline,
 * extended (12-bit), lossless (process 14 and SV1), JPEG-LS lossless and near-lossless, RLE
 * (DCMTK's codecs), JPEG 2000 lossless and lossy (OpenJPEG). Anything else (HTJ2K, JPEG XL,
 * MPEG, JPIP, ...) is XR_E_UNSUPPORTED "unsupported transfer syntax <UID> (<name>)".
 * Samples: 8 or 16 bits allocated, 1..16 stored (bits above High Bit masked off), signed or
 * unsigned; 1 sample (MONOCHROME1/2, PALETTE COLOR is refused) or 3 (RGB, YBR_FULL,
 * YBR_FULL_422, YBR_PARTIAL_420/422, YBR_ICT, YBR_RCT), color by pixel or by plane.
 *
 * The grayscale transform, per PS3.3 C.11 (all in double precision, output stored as float):
 *   1. color objects become luminance, ITU-R BT.601 luma: Y = 0.299 R + 0.587 G + 0.114 B (the
 *      weights of PIL's convert("L") and of pydicom's RGB->YBR_FULL); for YBR_* data Y is the
 *      stored Y sample itself. Color objects then skip steps 2-3 and are scaled by
 *      1 / (2^BitsStored - 1), like an 8-bit PNG divided by 255.
 *   2. Modality LUT: the Modality LUT Sequence if present, else Rescale Slope/Intercept
 *      (default 1/0).
 *   3. VOI: the VOI LUT Sequence (first item) if present, its output divided by 2^n - 1 (n from
 *      its LUT Descriptor), as pydicom's apply_voi_lut prefers it; else the first Window
 *      Center/Width with VOI LUT Function LINEAR (default), LINEAR_EXACT or SIGMOID
 *      (PS3.3 C.11.2.1.2) mapped to [0,1]; else the default window: LINEAR_EXACT between the
 *      0.5th and 99.5th percentiles (numpy's linear interpolation) of the modality values of
 *      the frame's non-padding pixels (a constant frame gives 0).
 *   4. inversion y -> 1 - y when Photometric Interpretation is MONOCHROME1 or Presentation LUT
 *      Shape is INVERSE (once, not twice: DX MONOCHROME1 objects carry both), so that bone is
 *      bright in every output.
 *   5. Pixel Padding Value (with Pixel Padding Range Limit): those pixels are left out of the
 *      default window's statistics and come out as 0.
 * Windows and LUTs in per-frame functional groups (enhanced objects) are not read.
 */

typedef enum dicom_frame_policy {
    DICOM_FRAMES_FIRST, /* decode the first frame only */
    DICOM_FRAMES_ALL,   /* every frame, each its own image (own default window) */
    DICOM_FRAMES_MAX,
} dicom_frame_policy;

/* "first", "all"; NULL when out of range. */
const char *dicom_frame_policy_name(dicom_frame_policy policy) DICOM_NOEXCEPT;
/* The policy named s, or -1. */
int dicom_frame_policy_from_string(const char *s) DICOM_NOEXCEPT;

/* Refuse objects past these before any large allocation (XR_E_LIMIT). 0 is not "unlimited". */
typedef struct dicom_pixel_limits {
    uint32_t max_rows, max_columns;
    uint32_t max_frames;        /* frames decoded (under DICOM_FRAMES_FIRST: 1) */
    uint64_t max_decoded_bytes; /* frames decoded x rows x columns x samples x 4 (32-bit
                                 * samples; bounds the float output too) + one stored frame */
} dicom_pixel_limits;

/* 16384 rows and columns, 1024 frames, 1 GiB (the configuration's defaults). */
dicom_pixel_limits dicom_pixel_limits_default(void) DICOM_NOEXCEPT;

typedef enum dicom_voi_source {
    DICOM_VOI_NONE,    /* color object: scaled by 1 / (2^BitsStored - 1) */
    DICOM_VOI_LUT,     /* VOI LUT Sequence */
    DICOM_VOI_WINDOW,  /* Window Center/Width from the object */
    DICOM_VOI_DEFAULT, /* percentile window, see above */
    DICOM_VOI_SOURCE_MAX,
} dicom_voi_source;

/* "none", "lut", "window", "default"; NULL when out of range. */
const char *dicom_voi_source_name(dicom_voi_source s) DICOM_NOEXCEPT;

typedef struct dicom_image {
    uint32_t rows, columns; /* per frame */
    uint32_t n_frames;      /* frames in pixels (1 under DICOM_FRAMES_FIRST) */
    float *pixels;          /* n_frames x rows x columns, row-major, in [0,1] after the
                             * grayscale transform above: bone bright; malloc'ed */
    uint32_t n_frames_in_object;            /* Number of Frames of the object */
    char transfer_syntax_uid[65];
    char photometric_interpretation[17];    /* as stored in the object */
    uint16_t bits_allocated, bits_stored;
    uint16_t samples_per_pixel;
    bool is_signed;                         /* Pixel Representation 1 */
    bool lossy;                             /* the transfer syntax is lossy */
    dicom_voi_source voi_source;
    char voi_function[16];                  /* LINEAR, LINEAR_EXACT, SIGMOID ("" for a LUT) */
    double window_center, window_width;     /* the window of frame 0 (default ones too) */
    bool inverted;                          /* MONOCHROME1 or Presentation LUT Shape INVERSE */
} dicom_image;

/*
 * Decode the pixels of the Part-10 file at path (or a bare implicit VR little endian data set)
 * and apply the grayscale transform. Returns XR_E_INPUT with "not a DICOM file" for what is not
 * DICOM, XR_E_INPUT for DICOM without usable pixels (no Pixel Data, inconsistent attributes,
 * truncated or corrupt data, naming what is wrong), XR_E_UNSUPPORTED for a transfer syntax, a
 * photometric interpretation or a bit depth not handled, XR_E_LIMIT past limits (checked from
 * the header, before the pixels are read), XR_E_IO, XR_E_NOMEM. *ret is written only on
 * success, freed with dicom_image_done. Reentrant; dicom_global_init must have run.
 */
__attribute__((warn_unused_result)) xr_code dicom_image_read(const char *path,
                                                             dicom_frame_policy policy,
                                                             const dicom_pixel_limits *limits,
                                                             dicom_image *ret,
                                                             xr_error *err) DICOM_NOEXCEPT;
/* Same from a buffer holding the whole file; messages carry no path. */
__attribute__((warn_unused_result)) xr_code
dicom_image_read_buffer(const void *buf, size_t n_bytes, dicom_frame_policy policy,
                        const dicom_pixel_limits *limits, dicom_image *ret,
                        xr_error *err) DICOM_NOEXCEPT;
/* Free pixels and zero *img; accepts a zeroed struct and NULL. */
void dicom_image_done(dicom_image *img) DICOM_NOEXCEPT;

/*
 * The decoded stored values before any grayscale step, for tests and tools: samples masked to
 * Bits Stored and sign-extended when signed; color by pixel; YBR_FULL_422 native data
 * upsampled (each chroma pair repeated), so color_model says YBR_FULL then.
 */
typedef struct dicom_raw_image {
    uint32_t rows, columns, n_frames;
    uint16_t samples_per_pixel;
    int32_t *values;     /* n_frames x rows x columns x samples_per_pixel; malloc'ed */
    char color_model[17]; /* photometric interpretation of values (a JPEG decoder may have
                           * turned YBR_FULL_422 into RGB) */
} dicom_raw_image;

/* As dicom_image_read, without the grayscale transform. Freed with dicom_raw_image_done. */
__attribute__((warn_unused_result)) xr_code dicom_raw_image_read(const char *path,
                                                                 dicom_frame_policy policy,
                                                                 const dicom_pixel_limits *limits,
                                                                 dicom_raw_image *ret,
                                                                 xr_error *err) DICOM_NOEXCEPT;
void dicom_raw_image_done(dicom_raw_image *img) DICOM_NOEXCEPT;

#ifdef __cplusplus
}
#endif
