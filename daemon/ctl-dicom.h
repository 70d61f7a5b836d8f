/*
 * xregctl dicom-decode: decode one DICOM object's pixels as the daemon will, and write them out
 * (for debugging, the decode tests and the benchmark).
 */
#pragma once

/* argv[0] is "dicom-decode"; returns the process exit code. */
int ctl_dicom_decode(int argc, char **argv);
