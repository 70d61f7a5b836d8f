/*
 * xregctl mean-std: per-channel mean and standard deviation of a dataset after decoding and
 * preprocessing (without the normalization step), the values a model's xreg.mean/xreg.std take.
 */
#pragma once

/* argv[0] is "mean-std"; returns the process exit code. */
int ctl_mean_std(int argc, char **argv);
