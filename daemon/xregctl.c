/*
 * xregctl: the admin command line. Subcommands reuse the daemon's own modules (the same
 * configuration loader, the same migrations), so what it accepts the daemon accepts.
 */
#include <curl/curl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "ctl-dicom.h"
#include "ctl-eval.h"
#include "ctl-meanstd.h"
#include "ctl-model.h"
#include "ctl-registry.h"
#include "ctl-nn.h"
#include "log.h"
#include "pgembed.h"
#include "pipeline.h"
#include "pseudonym.h"
#include "registry.h"
#include "xr-config.h"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: xregctl [-c PATH] COMMAND\n"
            "Administer an xreg registry.\n\n"
            "Commands:\n"
            "  check-config   validate the configuration file and print the effective values\n"
            "  migrate        apply the registry's database migrations\n"
            "  status [--json]  one screen of the running xregd's state (from its metrics port)\n"
            "  dicom-decode FILE  decode a DICOM object's pixels (see dicom-decode --help)\n"
            "  mean-std DIR...  per-channel mean/std of a dataset (see mean-std --help)\n");
    ctl_registry_usage(f);
    ctl_nn_usage(f);
    ctl_model_usage(f);
    ctl_eval_usage(f);
    fprintf(f,
            "\nOptions:\n"
            "  -c, --config PATH  configuration file (default %s/xregd.yaml)\n"
            "  -q, --quiet        print only errors\n"
            "      --version      print the version and exit\n"
            "  -h, --help         print this help and exit\n",
            XREG_SYSCONFDIR);
}

static int cmd_check_config(const char *path, bool quiet)
{
    xregd_config *cfg;
    xr_error err = XR_ERROR_INIT;
    if (config_load(path, &cfg, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    /* The key file is checked as xregd would (run this as xregd's user). */
    pseudonymizer *ps = NULL;
    if (pseudonymizer_new(cfg, &ps, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        if (err.detail[0])
            fprintf(stderr, "%s\n", err.detail);
        config_free(cfg);
        return 1;
    }
    char pseudo[200];
    pseudonymizer_describe(ps, pseudo, sizeof(pseudo));
    ps = pseudonymizer_free(ps);
    if (!quiet) {
        printf("%s: valid\n", path);
        printf("  pseudonymize: %s\n", pseudo);
        printf("  dicom: AE \"%s\" on %s:%lld, %lld associations\n", cfg->dicom.ae_title,
               cfg->dicom.bind[0] ? cfg->dicom.bind : "*", (long long)cfg->dicom.port,
               (long long)cfg->dicom.max_associations);
        printf("  spool: \"%s\", at most %lld bytes\n", cfg->spool.dir,
               (long long)cfg->spool.max_bytes);
        printf("  database: %s\n", cfg->database.conninfo[0] ? "external (conninfo set)"
                                                           : "embedded cluster in state_dir");
        printf("  pipeline: %lld workers x %lld threads, batches of up to %lld (wait %lld ms)\n",
               (long long)cfg->pipeline.workers, (long long)cfg->pipeline.threads_per_worker,
               (long long)cfg->pipeline.batch_max, (long long)cfg->pipeline.batch_wait_ms);
        printf("  models: body_part %s, implant %s, fracture %s (on %s)\n",
               cfg->models.body_part.path[0] ? cfg->models.body_part.path : "off",
               cfg->models.implant.path[0] ? cfg->models.implant.path : "off",
               cfg->models.fracture.path[0] ? cfg->models.fracture.path : "off",
               cfg->models.fracture.body_parts);
    }
    config_free(cfg);
    return 0;
}

static int cmd_migrate(const char *path, bool quiet)
{
    xregd_config *cfg;
    xr_error err = XR_ERROR_INIT;
    int ret = 1;
    pgembed *pg = NULL;
    char *conninfo = NULL;
    registry *reg = NULL;
    if (config_load(path, &cfg, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (cfg->database.conninfo[0] == '\0') {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s/postgresql", cfg->state_dir);
        if (pgembed_start(dir, cfg->database.embedded_user, &pg, &conninfo, &err)) {
            fprintf(stderr, "embedded PostgreSQL: %s\n", err.msg);
            if (err.detail[0])
                fprintf(stderr, "%s\n", err.detail);
            goto out;
        }
    } else if (!(conninfo = strdup(cfg->database.conninfo))) {
        fprintf(stderr, "out of memory\n");
        goto out;
    }
    unsigned applied = 0;
    if (registry_open(conninfo, "xregctl migrate", &reg, &err) ||
        pipeline_migrate(reg, &applied, &err)) {
        fprintf(stderr, "migrate: %s\n", err.msg);
        if (err.detail[0])
            fprintf(stderr, "%s\n", err.detail);
        goto out;
    }
    if (!quiet)
        printf("migrations applied: %u\n", applied);
    ret = 0;
out:
    registry_close(reg);
    pgembed_stop(pg);
    free(conninfo);
    config_free(cfg);
    return ret;
}

typedef struct ctl_opts {
    const char *config_path;
    bool quiet;
    bool json;
} ctl_opts;

static size_t collect(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    FILE *f = userdata;
    return fwrite(ptr, size, nmemb, f);
}

/* Ask the running xregd (its metrics endpoint, from the same configuration) for its status. */
static int cmd_status(const ctl_opts *o)
{
    xregd_config *cfg;
    xr_error err = XR_ERROR_INIT;
    if (config_load(o->config_path, &cfg, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (cfg->metrics.port == 0) {
        fprintf(stderr, "status: metrics.port is 0 in \"%s\", so xregd serves no status\n",
                o->config_path);
        config_free(cfg);
        return 1;
    }
    /* A wildcard bind is reached on loopback. */
    const char *host = cfg->metrics.bind;
    bool v6 = strchr(host, ':') != NULL;
    if (!host[0] || strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        host = "::1";
    char url[256];
    snprintf(url, sizeof(url), "http://%s%s%s:%lld/status%s", v6 ? "[" : "", host, v6 ? "]" : "",
             (long long)cfg->metrics.port, o->json ? "" : "?format=text");
    config_free(cfg);

    char *body = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&body, &n);
    CURL *curl = curl_easy_init();
    if (!f || !curl) {
        fprintf(stderr, "status: out of memory\n");
        if (f)
            fclose(f);
        free(body);
        return 1;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, f);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
    CURLcode cc = curl_easy_perform(curl);
    long http_code = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http_code);
    curl_easy_cleanup(curl);
    fclose(f);
    int ret = 0;
    if (cc != CURLE_OK) {
        fprintf(stderr, "status: could not reach xregd at %s: %s (is it running?)\n", url,
                errbuf[0] ? errbuf : curl_easy_strerror(cc));
        ret = 3; /* like systemctl status for a unit that is not running */
    } else if (http_code != 200) {
        fprintf(stderr, "status: %s answered HTTP %ld\n", url, http_code);
        ret = 1;
    } else
        fwrite(body, 1, n, stdout);
    free(body);
    return ret;
}

/* Parse options from argv[optind]; returns -1 to go on, else the exit code. */
static int parse_opts(int argc, char **argv, ctl_opts *o)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"quiet", no_argument, NULL, 'q'},
        {"json", no_argument, NULL, 'j'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {0},
    };
    int c;
    /* "+": stop at the first non-option, the command. */
    while ((c = getopt_long(argc, argv, "+c:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            o->config_path = optarg;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'j':
            o->json = true;
            break;
        case 'V':
            printf("xregctl %s\n", XREG_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    ctl_opts o = {.config_path = XREG_SYSCONFDIR "/xregd.yaml"};
    int rc = parse_opts(argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    /* Accept options after the command too: "xregctl check-config -c f.yaml". optind = 0
     * makes glibc's getopt start over, with the command as the new argv[0]. */
    int sargc = argc - optind;
    char **sargv = argv + optind;
    /* Subcommands with arguments of their own parse them themselves. */
    if (strcmp(cmd, "dicom-decode") == 0)
        return ctl_dicom_decode(sargc, sargv);
    if (strcmp(cmd, "mean-std") == 0)
        return ctl_mean_std(sargc, sargv);
    if (ctl_registry_handles(cmd)) { /* subcommands with options of their own */
        log_setup(o.quiet ? XR_LOG_WARNING : XR_LOG_NOTICE);
        return ctl_registry_main(o.config_path, o.quiet, sargc, sargv);
    }
    if (strcmp(cmd, "eval") == 0 || strcmp(cmd, "compare") == 0)
        return ctl_eval_main(o.config_path, sargc, sargv);
    if (strcmp(cmd, "model-info") == 0)
        return ctl_model_info(sargc, sargv);
    if (strncmp(cmd, "nn-", 3) == 0)
        return ctl_nn_main(sargc, sargv);
    optind = 0;
    rc = parse_opts(sargc, sargv, &o);
    if (rc >= 0)
        return rc;
    if (optind < sargc) {
        fprintf(stderr, "xregctl: unexpected argument \"%s\"\n", sargv[optind]);
        return 2;
    }
    log_setup(o.quiet ? XR_LOG_WARNING : XR_LOG_NOTICE);
    if (strcmp(cmd, "check-config") == 0)
        return cmd_check_config(o.config_path, o.quiet);
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(o.config_path, o.quiet);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(&o);
    fprintf(stderr, "xregctl: unrecognized command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
