/* xregctl model-info: print and validate a model's xreg.* metadata. */
#pragma once

#include <stdio.h>

/* argv[0] is "model-info"; returns 0 valid, 1 invalid metadata or unloadable model, 2 usage,
 * 3 an op nn/ does not run. */
int ctl_model_info(int argc, char **argv);
void ctl_model_usage(FILE *f);
