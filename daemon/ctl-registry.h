/*
 * xregctl's registry subcommands (ctl-registry.c): studies, label, export-dataset, audit verify.
 *
 *     if (ctl_registry_handles(cmd))
 *         return ctl_registry_main(config_path, quiet, argc - optind, argv + optind);
 *
 * Thread rule: single-threaded CLI code.
 */
#pragma once

#include <stdbool.h>
#include <stdio.h>

/* Whether cmd is one of the subcommands below. */
bool ctl_registry_handles(const char *cmd);
/* Run the subcommand argv[0] with its options; returns the exit code (0 ok, 1 failure or a
 * broken audit chain, 2 usage). */
int ctl_registry_main(const char *config_path, bool quiet, int argc, char **argv);
/* The lines for xregctl --help. */
void ctl_registry_usage(FILE *f);
