/* xregctl eval / compare: evaluate one model, or rank several, on a labelled test set. */
#pragma once

#include <stdio.h>

/* argv[0] is "eval" or "compare"; config_path is xregctl's -c (for registry predictions).
 * Returns 0, 1 failure, 2 usage. */
int ctl_eval_main(const char *config_path, int argc, char **argv);
void ctl_eval_usage(FILE *f);
