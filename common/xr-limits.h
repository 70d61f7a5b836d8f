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
/* A single received object; bigger ones are refused with A700 before disk fills (a 3000x3000
 * 16-bit CR is 18 MB; multi-frame secondary capture can reach hundreds of MB). */
#define XR_OBJECT_MAX_BYTES (4ULL * 1024 * 1024 * 1024)
/* Pseudonymization key file: HMAC-SHA256 wants at least its output size (32 bytes) of secret;
 * a file of more than 4 KiB is not a key but a mistake (a certificate bundle, a log). */
#define XR_PSEUDONYM_KEY_MIN_BYTES 32
#define XR_PSEUDONYM_KEY_MAX_BYTES 4096
