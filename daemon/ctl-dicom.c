/*
 * xregctl dicom-decode [-c CONFIG] [--frames first|all] [--out OUT.pgm|OUT.f32]
 *                      [--raw OUT.i32] [--repeat N] [--json] FILE
 *
 * Decodes FILE with dicom_image_read (limits and frame policy from CONFIG's pixels.* keys when
 * -c is given, else the defaults) and prints what was decoded. --out writes the grayscale
 * image: .pgm as 16-bit PGM (value round(p * 65535), frames stacked top to bottom), .f32 as
 * raw little-endian float32. --raw writes the stored values before the grayscale transform
 * (dicom_raw_image_read) as raw little-endian int32, color by pixel. --repeat N decodes N times
 * and reports the fastest (wall and CPU time), for benchmarks. Exit status: 0 decoded, 1 refused or failed (the
 * message on stderr starts with the xr_code name: "unsupported: ..."), 2 usage.
 */
#include "ctl-dicom.h"

#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "dicom.h"

static void usage(FILE *f)
{
    fprintf(f, "Usage: xregctl dicom-decode [-c CONFIG] [--frames first|all] [--out OUT.pgm|OUT.f32]\n"
               "                            [--raw OUT.i32] [--repeat N] [--json] FILE\n"
               "Decode a DICOM object's pixels as xregd does and print what was decoded.\n");
}

static double clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int write_all(const char *path, const void *data, size_t n, const char *header)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "dicom-decode: could not create \"%s\": %m\n", path);
        return 1;
    }
    bool ok = (!header || fputs(header, f) >= 0) && fwrite(data, 1, n, f) == n;
    ok = fclose(f) == 0 && ok;
    if (!ok) {
        fprintf(stderr, "dicom-decode: could not write \"%s\": %m\n", path);
        return 1;
    }
    return 0;
}

static int write_image(const char *path, const dicom_image *img)
{
    size_t n = (size_t)img->rows * img->columns * img->n_frames;
    if (ends_with(path, ".f32")) /* x86-64 and aarch64 are little endian */
        return write_all(path, img->pixels, n * sizeof(float), NULL);
    if (!ends_with(path, ".pgm")) {
        fprintf(stderr, "dicom-decode: --out \"%s\" must end in .pgm or .f32\n", path);
        return 2;
    }
    uint8_t *p = malloc(2 * n);
    if (!p) {
        fprintf(stderr, "dicom-decode: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v = (unsigned)lrintf(img->pixels[i] * 65535.0f);
        p[2 * i] = (uint8_t)(v >> 8); /* PGM's 16-bit samples are big endian */
        p[2 * i + 1] = (uint8_t)v;
    }
    char header[64];
    snprintf(header, sizeof(header), "P5\n%u %u\n65535\n", img->columns,
             img->rows * img->n_frames);
    int rc = write_all(path, p, 2 * n, header);
    free(p);
    return rc;
}

static void print_image(const dicom_image *img, const char *file, double ms, double cpu_ms,
                        bool json)
{
    const char *ts_name = dicom_uid_name(img->transfer_syntax_uid);
    if (json) {
        printf("{\"file\": \"%s\", \"rows\": %u, \"columns\": %u, \"n_frames\": %u, "
               "\"n_frames_in_object\": %u, \"transfer_syntax_uid\": \"%s\", "
               "\"photometric_interpretation\": \"%s\", \"bits_allocated\": %u, "
               "\"bits_stored\": %u, \"samples_per_pixel\": %u, \"is_signed\": %s, "
               "\"lossy\": %s, \"voi_source\": \"%s\", \"voi_function\": \"%s\", "
               "\"window_center\": %.17g, \"window_width\": %.17g, \"inverted\": %s, "
               "\"decode_ms\": %.3f, \"decode_cpu_ms\": %.3f}\n",
               file, img->rows, img->columns, img->n_frames, img->n_frames_in_object,
               img->transfer_syntax_uid, img->photometric_interpretation, img->bits_allocated,
               img->bits_stored, img->samples_per_pixel, img->is_signed ? "true" : "false",
               img->lossy ? "true" : "false", dicom_voi_source_name(img->voi_source),
               img->voi_function, isnan(img->window_center) ? 0.0 : img->window_center,
               isnan(img->window_width) ? 0.0 : img->window_width,
               img->inverted ? "true" : "false", ms, cpu_ms);
        return;
    }
    printf("%s: %u x %u, %u of %u frame%s, %s (%s), %s, %u/%u bits%s\n", file, img->rows,
           img->columns, img->n_frames, img->n_frames_in_object,
           img->n_frames_in_object == 1 ? "" : "s", img->transfer_syntax_uid,
           ts_name ? ts_name : "?", img->photometric_interpretation, img->bits_stored,
           img->bits_allocated, img->is_signed ? " signed" : "");
    if (img->voi_source == DICOM_VOI_LUT || img->voi_source == DICOM_VOI_NONE)
        printf("  VOI: %s", dicom_voi_source_name(img->voi_source));
    else
        printf("  VOI: %s %s center %g width %g", dicom_voi_source_name(img->voi_source),
               img->voi_function, img->window_center, img->window_width);
    printf("%s; decoded in %.1f ms (%.1f ms CPU)\n", img->inverted ? ", inverted" : "", ms, cpu_ms);
}

int ctl_dicom_decode(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"frames", required_argument, NULL, 'f'},
        {"out", required_argument, NULL, 'o'},    {"raw", required_argument, NULL, 'r'},
        {"repeat", required_argument, NULL, 'n'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},         {0},
    };
    const char *config_path = NULL, *frames = NULL, *out = NULL, *raw = NULL;
    long repeat = 1;
    bool json = false;
    int c;
    optind = 0;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            break;
        case 'f':
            frames = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'r':
            raw = optarg;
            break;
        case 'n': {
            char *end;
            repeat = strtol(optarg, &end, 10);
            if (*end || repeat < 1 || repeat > 100000) {
                fprintf(stderr, "dicom-decode: --repeat \"%s\" must be 1 to 100000\n", optarg);
                return 2;
            }
            break;
        }
        case 'j':
            json = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind + 1 != argc) {
        usage(stderr);
        return 2;
    }
    const char *file = argv[optind];

    dicom_pixel_limits lim = dicom_pixel_limits_default();
    dicom_frame_policy policy = DICOM_FRAMES_FIRST;
    xr_error err = XR_ERROR_INIT;
    if (config_path) {
        xregd_config *cfg;
        if (config_load(config_path, &cfg, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        lim.max_rows = (uint32_t)cfg->pixels.max_rows;
        lim.max_columns = (uint32_t)cfg->pixels.max_columns;
        lim.max_frames = (uint32_t)cfg->pixels.max_frames;
        lim.max_decoded_bytes = (uint64_t)cfg->pixels.max_decoded_bytes;
        policy = (dicom_frame_policy)dicom_frame_policy_from_string(cfg->pixels.frames);
        config_free(cfg);
    }
    if (frames) {
        int p = dicom_frame_policy_from_string(frames);
        if (p < 0) {
            fprintf(stderr, "dicom-decode: --frames \"%s\" must be first or all\n", frames);
            return 2;
        }
        policy = (dicom_frame_policy)p;
    }
    if (dicom_global_init(&err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }

    int rc = 0;
    dicom_image img = {0};
    double best = INFINITY, best_cpu = INFINITY;
    for (long i = 0; i < repeat; i++) {
        dicom_image_done(&img);
        double t0 = clock_ms(CLOCK_MONOTONIC), c0 = clock_ms(CLOCK_PROCESS_CPUTIME_ID);
        if (dicom_image_read(file, policy, &lim, &img, &err)) {
            fprintf(stderr, "%s: %s\n", xr_code_name(err.code), err.msg);
            if (err.detail[0])
                fprintf(stderr, "  %s\n", err.detail);
            rc = 1;
            goto out;
        }
        double ms = clock_ms(CLOCK_MONOTONIC) - t0;
        double cpu = clock_ms(CLOCK_PROCESS_CPUTIME_ID) - c0;
        best = ms < best ? ms : best;
        best_cpu = cpu < best_cpu ? cpu : best_cpu;
    }
    print_image(&img, file, best, best_cpu, json);
    if (out && (rc = write_image(out, &img)))
        goto out;
    if (raw) {
        dicom_raw_image r = {0};
        if (dicom_raw_image_read(file, policy, &lim, &r, &err)) {
            fprintf(stderr, "%s: %s\n", xr_code_name(err.code), err.msg);
            rc = 1;
            goto out;
        }
        size_t n = (size_t)r.rows * r.columns * r.samples_per_pixel * r.n_frames;
        rc = write_all(raw, r.values, n * sizeof(int32_t), NULL);
        if (!rc && !json)
            printf("  raw: %u samples per pixel, color model %s\n", r.samples_per_pixel,
                   r.color_model);
        dicom_raw_image_done(&r);
    }
out:
    dicom_image_done(&img);
    dicom_global_done();
    return rc;
}
