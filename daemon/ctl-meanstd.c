/*
 * xregctl mean-std [-c CONFIG] [--size H,W] [--channels 1|3] [--resize stretch|letterbox]
 *                  [-m KEY=VALUE]... [--frames first|all] [--jobs N] [--strict] [--json] [-v]
 *                  [-q] DIR...
 *
 * The thesis's mean_std_dataset, over PNG, JPEG and DICOM files: each image is decoded (DICOM
 * through dicom_image_read: modality LUT, VOI, inversion; PNG/JPEG through nn-image.h) and
 * preprocessed exactly as for a model of the given input size, channels and resize mode, minus
 * the (x - mean) / std step. The result is, per channel, the mean and the population standard
 * deviation over every pixel of every preprocessed image (letterbox padding included: it is
 * part of what the model sees), accumulated in double precision.
 *
 * Streaming: files are listed first (paths only), then decoded one at a time per worker; each
 * image is reduced to (count, mean, M2) per channel and merged with Chan et al.'s pairwise
 * update in file order, so the result does not depend on --jobs and no pixels are kept.
 *
 * Which files: every regular file under DIR (recursively; symlinks followed, each directory
 * listed once, so a file linked from two folders counts twice but loops end). A file is an
 * image by its content: PNG or JPEG signature, else DICOM if dicom_image_read recognises it.
 * Policy for the rest:
 *   - skipped: not PNG, JPEG or DICOM (labels.csv, TIFF, README): counted, listed with -v and in
 *     --json; never an error. A file with the DICOM preamble ("DICM" at offset 128) is never
 *     skipped: if it does not decode it is unreadable.
 *   - unreadable: a PNG, JPEG or DICOM file that fails to decode (damaged, unsupported transfer
 *     syntax, past a limit): counted and listed on stderr with the reason, left out of the
 *     statistics, exit status 0. With --strict the first one stops the run with status 1.
 * Exit status: 0 done, 1 --strict failure or no usable image, 2 usage.
 *
 * Progress: when stderr is a terminal (and not -q), one line updated 5 times a second with
 * files done / total, rate and time left; nothing otherwise.
 */
#include "xr-json.h"
#include "ctl-meanstd.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "xr-error.h"
#include "xr-time.h"
#include "config.h"
#include "dicom.h"
#include "nn-image.h"

#define MS_JOBS_MAX 64

typedef enum file_state {
    FILE_PENDING,
    FILE_USED,
    FILE_SKIPPED,
    FILE_UNREADABLE,
} file_state;

/* What one file contributed: pooled per-channel (n, mean, M2) over its frames. */
typedef struct file_result {
    file_state state;
    bool dicom;
    uint32_t frames;
    double n;
    double mean[NN_PREPROC_CHANNELS_MAX], m2[NN_PREPROC_CHANNELS_MAX];
    char *why; /* skipped/unreadable reason, malloc'ed */
} file_result;

typedef struct ms_ctx {
    char **paths;
    size_t n_paths, cap_paths;
    struct {
        dev_t dev;
        ino_t ino;
    } *dirs;
    size_t n_dirs, cap_dirs;
    file_result *res;
    nn_preproc_spec spec;
    nn_image_params img_params;
    dicom_pixel_limits dcm_limits;
    dicom_frame_policy frames;
    bool strict;
    atomic_size_t next, done;
    atomic_bool stop;
    size_t failed_at; /* --strict: the file that stopped the run */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned running;
} ms_ctx;

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: xregctl mean-std [options] DIR...\n"
            "Per-channel mean and standard deviation of the PNG, JPEG and DICOM images under DIR,\n"
            "decoded and preprocessed as for a model (without normalization): the values for\n"
            "xreg.mean and xreg.std.\n\n"
            "Options:\n"
            "  --size H,W            model input size (default 224,224)\n"
            "  --channels 1|3        model channels (default 3)\n"
            "  --resize MODE         stretch | letterbox (default stretch)\n"
            "  -m, --metadata K=V    a model's metadata entry (xreg.input_size, xreg.channels,\n"
            "                        xreg.resize; repeat it) in place of the three options above\n"
            "  --frames first|all    multi-frame DICOM: first frame, or every frame as an image\n"
            "                        (default: pixels.frames of -c CONFIG, else first)\n"
            "  -c, --config PATH     take DICOM limits and frames from this xregd.yaml\n"
            "  -j, --jobs N          decoding threads (default: the online CPUs, at most 8)\n"
            "      --strict          stop with status 1 at the first unreadable image\n"
            "      --json            print the result as JSON\n"
            "  -v, --verbose         also list skipped (non-image) files\n"
            "  -q, --quiet           no progress display\n"
            "  -h, --help            print this help\n");
}

/* ---- file list ------------------------------------------------------------------------------ */
static int add_path(ms_ctx *c, char *p)
{
    if (c->n_paths == c->cap_paths) {
        size_t cap = c->cap_paths ? c->cap_paths * 2 : 1024;
        char **np = realloc(c->paths, cap * sizeof(*np));
        if (!np) {
            free(p);
            return -1;
        }
        c->paths = np;
        c->cap_paths = cap;
    }
    c->paths[c->n_paths++] = p;
    return 0;
}

/* A directory already listed (symlinks may lead back to it). */
static bool seen_dir(ms_ctx *c, const struct stat *st)
{
    for (size_t i = 0; i < c->n_dirs; i++)
        if (c->dirs[i].dev == st->st_dev && c->dirs[i].ino == st->st_ino)
            return true;
    if (c->n_dirs == c->cap_dirs) {
        size_t cap = c->cap_dirs ? c->cap_dirs * 2 : 64;
        void *nd = realloc(c->dirs, cap * sizeof(*c->dirs));
        if (!nd)
            return true; /* out of memory: list no more directories */
        c->dirs = nd;
        c->cap_dirs = cap;
    }
    c->dirs[c->n_dirs].dev = st->st_dev;
    c->dirs[c->n_dirs++].ino = st->st_ino;
    return false;
}

/* Depth-first listing of regular files. Symlinks are followed (split folders often link to the
 * originals); a directory reached twice is listed once, so link loops end. */
static int walk(ms_ctx *c, const char *dir, int depth)
{
    if (depth > 64) {
        fprintf(stderr, "mean-std: \"%s\": directories nested too deep, ignoring\n", dir);
        return 0;
    }
    DIR *d = opendir(dir);
    if (!d) {
        /* A subdirectory we may not read is reported and left out, like an unreadable file. */
        fprintf(stderr, "mean-std: could not open directory \"%s\": %m%s\n", dir,
                depth > 0 ? ", ignoring" : "");
        return depth > 0 ? 0 : -1;
    }
    struct dirent *e;
    int rc = 0;
    while (rc == 0 && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p;
        if (asprintf(&p, "%s/%s", dir, e->d_name) < 0)
            return closedir(d), -1;
        struct stat st;
        if (stat(p, &st) != 0) {
            fprintf(stderr, "mean-std: cannot stat \"%s\": %m, ignoring\n", p);
            free(p);
        } else if (S_ISDIR(st.st_mode)) {
            if (!seen_dir(c, &st))
                rc = walk(c, p, depth + 1);
            free(p);
        } else if (S_ISREG(st.st_mode)) {
            rc = add_path(c, p);
        } else {
            free(p);
        }
    }
    closedir(d);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- per-image statistics -------------------------------------------------------------------- */
static void merge(double *n, double *mean, double *m2, double nb, const double *meanb,
                  const double *m2b, uint32_t channels)
{
    if (nb == 0)
        return;
    double na = *n, nab = na + nb;
    for (uint32_t k = 0; k < channels; k++) {
        double delta = meanb[k] - mean[k];
        mean[k] += delta * (nb / nab);
        m2[k] += m2b[k] + delta * delta * (na * nb / nab);
    }
    *n = nab;
}

static void add_tensor(file_result *r, const float *t, const nn_preproc_spec *s)
{
    size_t plane = (size_t)s->height * s->width;
    double mean[NN_PREPROC_CHANNELS_MAX], m2[NN_PREPROC_CHANNELS_MAX];
    for (uint32_t k = 0; k < s->channels; k++) {
        const float *p = t + k * plane;
        double sum = 0;
        for (size_t i = 0; i < plane; i++)
            sum += p[i];
        double mu = sum / (double)plane, q = 0;
        for (size_t i = 0; i < plane; i++) {
            double d = p[i] - mu;
            q += d * d;
        }
        mean[k] = mu;
        m2[k] = q;
    }
    merge(&r->n, r->mean, r->m2, (double)plane, mean, m2, s->channels);
    r->frames++;
}

static void set_why(file_result *r, file_state st, const xr_error *err, const char *fallback)
{
    r->state = st;
    r->why = NULL;
    if (err && err->msg[0] && err->detail[0]) {
        if (asprintf(&r->why, "%s (%s)", err->msg, err->detail) < 0)
            r->why = NULL;
    } else {
        r->why = strdup(err && err->msg[0] ? err->msg : fallback);
    }
}

static void process_file(ms_ctx *c, nn_preproc *pp, float *tensor, size_t n_floats, size_t i)
{
    const char *path = c->paths[i];
    file_result *r = &c->res[i];
    xr_error err = XR_ERROR_INIT;
    uint8_t head[132];
    ssize_t got = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        got = read(fd, head, sizeof(head));
        close(fd);
    }
    if (got < 0) {
        xr_error_errno(&err, errno, "could not read \"%s\"", path);
        set_why(r, FILE_UNREADABLE, &err, NULL);
        return;
    }
    if (nn_image_format_detect(head, (size_t)got) != NN_IMAGE_FORMAT_UNKNOWN) {
        nn_image img = {0};
        if (nn_image_read_file(path, &c->img_params, &img, &err) ||
            nn_preproc_run(pp, &img, tensor, n_floats, &err)) {
            nn_image_done(&img);
            set_why(r, FILE_UNREADABLE, &err, NULL);
            return;
        }
        add_tensor(r, tensor, &c->spec);
        nn_image_done(&img);
        r->state = FILE_USED;
        return;
    }
    dicom_image d = {0};
    xr_code rc = dicom_image_read(path, c->frames, &c->dcm_limits, &d, &err);
    /* A file with the Part-10 preamble claims to be DICOM: damaged, not skipped. */
    bool part10 = got == (ssize_t)sizeof(head) && memcmp(head + 128, "DICM", 4) == 0;
    if (rc == XR_E_INPUT && !part10 && strstr(err.msg, "not a DICOM file")) {
        set_why(r, FILE_SKIPPED, NULL, "not a PNG, JPEG or DICOM file");
        return;
    }
    if (rc) {
        set_why(r, FILE_UNREADABLE, &err, NULL);
        return;
    }
    r->dicom = true;
    size_t frame = (size_t)d.rows * d.columns;
    for (uint32_t f = 0; f < d.n_frames; f++) {
        nn_image view = {.width = d.columns, .height = d.rows, .channels = 1,
                         .data = d.pixels + f * frame, .owned = false};
        if (nn_preproc_run(pp, &view, tensor, n_floats, &err)) {
            xr_error_prefix(&err, "frame %u: ", f);
            set_why(r, FILE_UNREADABLE, &err, NULL);
            dicom_image_done(&d);
            return;
        }
        add_tensor(r, tensor, &c->spec);
    }
    dicom_image_done(&d);
    r->state = FILE_USED;
}

static void *worker(void *arg)
{
    ms_ctx *c = arg;
    nn_preproc *pp = NULL;
    xr_error err = XR_ERROR_INIT;
    float *tensor = NULL;
    size_t n_floats = 0;
    if (nn_preproc_new(&c->spec, &pp, &err) == XR_OK) {
        n_floats = nn_preproc_output_floats(pp);
        tensor = malloc(n_floats * sizeof(float));
    }
    if (!tensor) {
        fprintf(stderr, "mean-std: out of memory\n");
        atomic_store(&c->stop, true);
    }
    while (tensor && !atomic_load(&c->stop)) {
        size_t i = atomic_fetch_add(&c->next, 1);
        if (i >= c->n_paths)
            break;
        process_file(c, pp, tensor, n_floats, i);
        if (c->strict && c->res[i].state == FILE_UNREADABLE) {
            pthread_mutex_lock(&c->lock);
            if (!atomic_load(&c->stop) || i < c->failed_at)
                c->failed_at = i;
            atomic_store(&c->stop, true);
            pthread_mutex_unlock(&c->lock);
        }
        atomic_fetch_add(&c->done, 1);
    }
    free(tensor);
    nn_preproc_free(pp);
    pthread_mutex_lock(&c->lock);
    c->running--;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* ---- output ---------------------------------------------------------------------------------- */
static void progress(ms_ctx *c, int64_t t0, bool final)
{
    size_t done = atomic_load(&c->done);
    double s = (double)(xr_mono_us() - t0) / 1e6;
    double rate = s > 0 ? (double)done / s : 0;
    double left = rate > 0 ? (double)(c->n_paths - done) / rate : 0;
    fprintf(stderr, "\r\033[Kmean-std: %zu/%zu files, %.1f files/s, %s %d:%02d", done, c->n_paths,
            rate, final ? "took" : "left", (int)((final ? s : left) / 60),
            (int)fmod(final ? s : left, 60));
    if (final)
        fputc('\n', stderr);
    fflush(stderr);
}

static bool parse_size(const char *s, uint32_t *h, uint32_t *w)
{
    char *e;
    errno = 0;
    unsigned long a = strtoul(s, &e, 10);
    if (e == s || *e != ',' || errno)
        return false;
    const char *s2 = e + 1;
    unsigned long b = strtoul(s2, &e, 10);
    if (e == s2 || *e || errno || a > UINT32_MAX || b > UINT32_MAX)
        return false;
    *h = (uint32_t)a;
    *w = (uint32_t)b;
    return true;
}

int ctl_mean_std(int argc, char **argv)
{
    static const struct option opts[] = {
        {"size", required_argument, NULL, 's'},   {"channels", required_argument, NULL, 'C'},
        {"resize", required_argument, NULL, 'r'}, {"frames", required_argument, NULL, 'f'},
        {"config", required_argument, NULL, 'c'}, {"jobs", required_argument, NULL, 'j'},
        {"strict", no_argument, NULL, 'S'},       {"json", no_argument, NULL, 'J'},
        {"verbose", no_argument, NULL, 'v'},      {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},         {"metadata", required_argument, NULL, 'm'},
        {0},
    };
    ms_ctx c = {.spec = nn_preproc_spec_default(), .img_params = nn_image_params_default(),
                .dcm_limits = dicom_pixel_limits_default(), .frames = DICOM_FRAMES_FIRST};
    c.spec.normalize = false;
    const char *config_path = NULL, *frames = NULL;
    bool json = false, verbose = false, quiet = false;
    const char *mkeys[16], *mvals[16];
    size_t n_meta = 0;
    long jobs = sysconf(_SC_NPROCESSORS_ONLN);
    jobs = jobs < 1 ? 1 : jobs > 8 ? 8 : jobs;
    int o;
    optind = 0;
    while ((o = getopt_long(argc, argv, "c:j:m:vqh", opts, NULL)) != -1) {
        switch (o) {
        case 'm': {
            char *eq = strchr(optarg, '=');
            if (!eq || n_meta == 16) {
                fprintf(stderr, "mean-std: --metadata \"%s\" must be KEY=VALUE (at most 16)\n",
                        optarg);
                return 2;
            }
            *eq = '\0';
            mkeys[n_meta] = optarg;
            mvals[n_meta++] = eq + 1;
            break;
        }
        case 's':
            if (!parse_size(optarg, &c.spec.height, &c.spec.width)) {
                fprintf(stderr, "mean-std: --size \"%s\" must be H,W (e.g. 224,224)\n", optarg);
                return 2;
            }
            break;
        case 'C':
            if (strcmp(optarg, "1") && strcmp(optarg, "3")) {
                fprintf(stderr, "mean-std: --channels \"%s\" must be 1 or 3\n", optarg);
                return 2;
            }
            c.spec.channels = (uint32_t)atoi(optarg);
            break;
        case 'r':
            c.spec.resize = nn_resize_mode_from_string(optarg);
            if (c.spec.resize == NN_RESIZE_MODE_MAX) {
                fprintf(stderr, "mean-std: --resize \"%s\" must be stretch or letterbox\n",
                        optarg);
                return 2;
            }
            break;
        case 'f':
            frames = optarg;
            break;
        case 'c':
            config_path = optarg;
            break;
        case 'j': {
            char *e;
            jobs = strtol(optarg, &e, 10);
            if (*e || jobs < 1 || jobs > MS_JOBS_MAX) {
                fprintf(stderr, "mean-std: --jobs \"%s\" must be in [1, %d]\n", optarg,
                        MS_JOBS_MAX);
                return 2;
            }
            break;
        }
        case 'S':
            c.strict = true;
            break;
        case 'J':
            json = true;
            break;
        case 'v':
            verbose = true;
            break;
        case 'q':
            quiet = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    xr_error err = XR_ERROR_INIT;
    if (n_meta && nn_preproc_spec_from_metadata(mkeys, mvals, n_meta, &c.spec, &err)) {
        fprintf(stderr, "mean-std: %s\n", err.msg);
        return 2;
    }
    c.spec.normalize = false;
    if (nn_preproc_spec_validate(&c.spec, &err)) {
        fprintf(stderr, "mean-std: %s\n", err.msg);
        return 2;
    }
    c.img_params.color = nn_preproc_spec_color(&c.spec);
    if (config_path) {
        xregd_config *cfg;
        if (config_load(config_path, &cfg, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        c.dcm_limits.max_rows = (uint32_t)cfg->pixels.max_rows;
        c.dcm_limits.max_columns = (uint32_t)cfg->pixels.max_columns;
        c.dcm_limits.max_frames = (uint32_t)cfg->pixels.max_frames;
        c.dcm_limits.max_decoded_bytes = (uint64_t)cfg->pixels.max_decoded_bytes;
        c.frames = (dicom_frame_policy)dicom_frame_policy_from_string(cfg->pixels.frames);
        config_free(cfg);
    }
    if (frames) {
        int p = dicom_frame_policy_from_string(frames);
        if (p < 0) {
            fprintf(stderr, "mean-std: --frames \"%s\" must be first or all\n", frames);
            return 2;
        }
        c.frames = (dicom_frame_policy)p;
    }
    if (dicom_global_init(&err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }

    int ret = 1;
    int64_t t0 = xr_mono_us();
    for (int i = optind; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(stderr, "mean-std: \"%s\" is not a directory\n", argv[i]);
            ret = 2;
            goto out;
        }
        size_t len = strlen(argv[i]);
        while (len > 1 && argv[i][len - 1] == '/')
            argv[i][--len] = '\0';
        if (seen_dir(&c, &st))
            continue;
        if (walk(&c, argv[i], 0) != 0) {
            fprintf(stderr, "mean-std: could not list \"%s\"\n", argv[i]);
            goto out;
        }
    }
    if (c.n_paths)
        qsort(c.paths, c.n_paths, sizeof(*c.paths), cmp_str);
    c.res = calloc(c.n_paths ? c.n_paths : 1, sizeof(*c.res));
    if (!c.res) {
        fprintf(stderr, "mean-std: out of memory\n");
        goto out;
    }

    pthread_mutex_init(&c.lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c.cond, &ca);
    pthread_condattr_destroy(&ca);
    bool show = !quiet && isatty(STDERR_FILENO);
    pthread_t th[MS_JOBS_MAX];
    long started = 0;
    for (; started < jobs; started++) {
        if (pthread_create(&th[started], NULL, worker, &c) != 0)
            break;
        pthread_mutex_lock(&c.lock);
        c.running++;
        pthread_mutex_unlock(&c.lock);
    }
    if (started == 0) {
        fprintf(stderr, "mean-std: could not start a thread\n");
        goto out;
    }
    /* The main thread only shows progress: wake every 200 ms or when the last worker ends. */
    pthread_mutex_lock(&c.lock);
    while (c.running > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L)
            ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        (void)pthread_cond_timedwait(&c.cond, &c.lock, &ts);
        if (show && c.running > 0)
            progress(&c, t0, false);
    }
    pthread_mutex_unlock(&c.lock);
    for (long i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (show)
        progress(&c, t0, true);
    double secs = (double)(xr_mono_us() - t0) / 1e6;

    if (c.strict && atomic_load(&c.stop) && c.res[c.failed_at].state == FILE_UNREADABLE) {
        const char *why = c.res[c.failed_at].why ? c.res[c.failed_at].why : "";
        if (strstr(why, c.paths[c.failed_at]))
            fprintf(stderr, "mean-std: %s\n", why);
        else
            fprintf(stderr, "mean-std: \"%s\": %s\n", c.paths[c.failed_at], why);
        fprintf(stderr, "mean-std: stopped at the first unreadable image (--strict)\n");
        goto out;
    }
    if (atomic_load(&c.stop))
        goto out; /* out of memory, said above */

    /* Merge in file order: the same bits whatever --jobs was. */
    double n = 0, mean[NN_PREPROC_CHANNELS_MAX] = {0}, m2[NN_PREPROC_CHANNELS_MAX] = {0};
    size_t n_used = 0, n_dicom = 0, n_frames = 0, n_skipped = 0, n_bad = 0;
    for (size_t i = 0; i < c.n_paths; i++) {
        file_result *r = &c.res[i];
        if (r->state == FILE_USED) {
            merge(&n, mean, m2, r->n, r->mean, r->m2, c.spec.channels);
            n_used++;
            n_dicom += r->dicom;
            n_frames += r->frames;
        } else if (r->state == FILE_SKIPPED) {
            n_skipped++;
            if (verbose && !json)
                fprintf(stderr, "skipped: %s: %s\n", c.paths[i], r->why ? r->why : "");
        } else if (r->state == FILE_UNREADABLE) {
            n_bad++;
            /* The decoders' messages usually name the file already. */
            const char *why = r->why ? r->why : "";
            if (strstr(why, c.paths[i]))
                fprintf(stderr, "unreadable: %s\n", why);
            else
                fprintf(stderr, "unreadable: %s: %s\n", c.paths[i], why);
        }
    }
    if (n_used == 0) {
        fprintf(stderr, "mean-std: no readable PNG, JPEG or DICOM image under the given "
                        "director%s (%zu files: %zu skipped, %zu unreadable)\n",
                argc - optind > 1 ? "ies" : "y", c.n_paths, n_skipped, n_bad);
        goto out;
    }
    double sd[NN_PREPROC_CHANNELS_MAX];
    for (uint32_t k = 0; k < c.spec.channels; k++)
        sd[k] = sqrt(m2[k] / n);
    const char *rs = nn_resize_mode_name(c.spec.resize);
    if (json) {
        printf("{\"mean\": [");
        for (uint32_t k = 0; k < c.spec.channels; k++)
            printf("%s%.9g", k ? ", " : "", mean[k]);
        printf("], \"std\": [");
        for (uint32_t k = 0; k < c.spec.channels; k++)
            printf("%s%.9g", k ? ", " : "", sd[k]);
        printf("],\n \"input_size\": [%u, %u], \"channels\": %u, \"resize\": \"%s\", "
               "\"frames\": \"%s\",\n",
               c.spec.height, c.spec.width, c.spec.channels, rs,
               dicom_frame_policy_name(c.frames));
        printf(" \"files\": {\"found\": %zu, \"used\": %zu, \"images\": %zu, \"dicom\": %zu, "
               "\"inputs\": %zu, \"skipped\": %zu, \"unreadable\": %zu},\n",
               c.n_paths, n_used, n_used - n_dicom, n_dicom, n_frames, n_skipped, n_bad);
        printf(" \"pixels_per_channel\": %.0f, \"seconds\": %.3f,\n \"unreadable\": [", n, secs);
        bool first = true;
        for (size_t i = 0; i < c.n_paths; i++) {
            if (c.res[i].state != FILE_UNREADABLE)
                continue;
            printf("%s\n  {\"path\": ", first ? "" : ",");
            xr_json_write_str(stdout, c.paths[i]);
            printf(", \"error\": ");
            xr_json_write_str(stdout, c.res[i].why ? c.res[i].why : "");
            printf("}");
            first = false;
        }
        printf("],\n \"skipped\": [");
        first = true;
        for (size_t i = 0; i < c.n_paths; i++) {
            if (c.res[i].state != FILE_SKIPPED)
                continue;
            printf("%s", first ? "" : ", ");
            xr_json_write_str(stdout, c.paths[i]);
            first = false;
        }
        printf("]}\n");
    } else {
        printf("files: %zu found, %zu used (%zu PNG/JPEG, %zu DICOM; %zu inputs), %zu skipped "
               "(not an image), %zu unreadable\n",
               c.n_paths, n_used, n_used - n_dicom, n_dicom, n_frames, n_skipped, n_bad);
        printf("preprocessing: %ux%u, %u channel%s, %s, %s DICOM frame%s\n", c.spec.height,
               c.spec.width, c.spec.channels, c.spec.channels > 1 ? "s" : "", rs,
               c.frames == DICOM_FRAMES_ALL ? "every" : "first",
               c.frames == DICOM_FRAMES_ALL ? "" : " only");
        printf("xreg.mean=");
        for (uint32_t k = 0; k < c.spec.channels; k++)
            printf("%s%.7g", k ? "," : "", mean[k]);
        printf("\nxreg.std=");
        for (uint32_t k = 0; k < c.spec.channels; k++)
            printf("%s%.7g", k ? "," : "", sd[k]);
        printf("\ntime: %.2f s (%.1f files/s)\n", secs, secs > 0 ? (double)c.n_paths / secs : 0);
    }
    ret = 0;
out:
    for (size_t i = 0; i < c.n_paths; i++) {
        free(c.paths[i]);
        if (c.res)
            free(c.res[i].why);
    }
    free(c.paths);
    free(c.dirs);
    free(c.res);
    dicom_global_done();
    return ret;
}
