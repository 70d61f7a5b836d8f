/* xregctl nn-info, nn-run, nn-bench: the ONNX engine from the command line. */
#pragma once

#include <stdio.h>

/* argv[0] is the command ("nn-info", ...); returns the exit code, 2 for an unknown command. */
int ctl_nn_main(int argc, char **argv);
/* The commands' lines for xregctl --help. */
void ctl_nn_usage(FILE *f);
