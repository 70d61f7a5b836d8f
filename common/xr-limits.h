/*
 * Hard limits, each with the reason for its value. Configurable limits have their bounds here.
 */
#pragma once

/* DICOM PS3.5 6.2: AE titles are at most 16 characters. */
#define XR_AE_TITLE_MAX 16
/* DICOM PS3.5 9.1: a UID is at most 64 characters. */
#define XR_UID_MAX 64
/* Long enough for any realistic spool/state path while leaving room below PATH_MAX (4096) for
 * the file names we append. */
#define XR_PATH_MAX 1024
/* One YAML configuration file; anything larger is a mistake, not a configuration. */
#define XR_CONFIG_FILE_MAX_BYTES (1024 * 1024)
/* Concurrent associations: each takes a thread; past this a TCP load balancer and a second
 * instance are the answer (ARCHITECTURE "Scaling past one machine"). */
#define XR_MAX_ASSOCIATIONS_MAX 1024
/* Pipeline workers: each holds one PostgreSQL connection. */
#define XR_WORKERS_MAX 64
/* OpenMP threads per worker: past the cores of a large server, more only adds contention. */
#define XR_THREADS_PER_WORKER_MAX 256
/* Objects classified in one batch: each holds its model inputs (3 x 224 x 224 floats = 588 KiB
 * per model and frame), and CPU inference gains little past a few dozen. */
#define XR_BATCH_MAX 256
/* How long a worker may hold the first object of a batch waiting for more. */
#define XR_BATCH_WAIT_MS_MAX 10000
/* A single received object; bigger ones are refused with A700 before disk fills (a 3000x3000
 * 16-bit CR is 18 MB; multi-frame secondary capture can reach hundreds of MB). */
#define XR_OBJECT_MAX_BYTES (4ULL * 1024 * 1024 * 1024)
/* Images read by nn/ (PNG, JPEG): a radiograph is at most ~4300 px a side (43 cm at 0.1 mm), so
 * 16384 leaves room for stitched long-leg films while refusing decompression bombs; PNG itself
 * allows 2^31-1. 65535 is the hard ceiling (JPEG's own maximum). */
#define XR_IMAGE_DIM_DEFAULT 16384
#define XR_IMAGE_DIM_MAX 65535
/* The float image (4 bytes a sample): 16384 x 16384 gray is exactly 1 GiB. */
#define XR_IMAGE_DECODED_BYTES_DEFAULT (1ULL << 30)
/* Compressed image files are read whole; 512 MiB is far past any real PNG/JPEG radiograph. */
#define XR_IMAGE_FILE_BYTES_DEFAULT (512ULL << 20)
/* A model's input side: CNN/ViT inputs are 224-1024 px; 8192 bounds one input tensor at
 * 768 MiB (3 channels) so a bad xreg.input_size cannot ask for more. */
#define XR_IMAGE_MODEL_DIM_MAX 8192
/* Progressive JPEG scans: real files have about 10; thousands make decoding take minutes
 * (libjpeg-turbo's libjpeg.txt warns about such files). */
#define XR_JPEG_MAX_SCANS 1000
/* Decoded pixels (pixels.* in the configuration). Rows and Columns are US values, so 65535 is
 * the most DICOM can say; 16384 covers a 43 cm detector at 26 um. */
#define XR_PIXELS_MAX_ROWS_DEFAULT 16384
#define XR_PIXELS_MAX_COLUMNS_DEFAULT 16384
#define XR_PIXELS_DIM_MAX 65535
/* Multi-frame X-ray objects (tomosynthesis, fluoroscopy loops) hold hundreds of frames. */
#define XR_PIXELS_MAX_FRAMES_DEFAULT 1024
#define XR_PIXELS_FRAMES_MAX (1024 * 1024)
/* What one decode may hold: 1 GiB is 64 frames of 2048 x 2048 as 32-bit samples. */
#define XR_PIXELS_MAX_DECODED_BYTES_DEFAULT (1024ULL * 1024 * 1024)
/* A ceiling for the configuration: more than this is a typing error, not a machine. */
#define XR_PIXELS_DECODED_BYTES_MAX (256ULL * 1024 * 1024 * 1024)
/* Pseudonymization key file: HMAC-SHA256 wants at least its output size (32 bytes) of secret;
 * a file of more than 4 KiB is not a key but a mistake (a certificate bundle, a log). */
#define XR_PSEUDONYM_KEY_MIN_BYTES 32
#define XR_PSEUDONYM_KEY_MAX_BYTES 4096
