/*
 * eval-plot: PNG figures with cairo (image surface, toy text API: sans-serif from fontconfig).
 */
#include "eval-plot.h"

#include <cairo.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define W 720
#define H 640
#define ML 80.0 /* margins: left, right, top, bottom */
#define MR 30.0
#define MT 50.0
#define MB 70.0

/* Colour-blind-safe palette (Okabe-Ito). */
static const double palette[][3] = {
    {0.000, 0.447, 0.698}, {0.835, 0.369, 0.000}, {0.000, 0.620, 0.451}, {0.800, 0.475, 0.655},
    {0.941, 0.894, 0.259}, {0.337, 0.706, 0.914}, {0.902, 0.624, 0.000}, {0.0, 0.0, 0.0},
};
#define N_PALETTE (sizeof(palette) / sizeof(palette[0]))

static cairo_t *begin(cairo_surface_t **ret_s, int w, int h)
{
    cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h);
    cairo_t *cr = cairo_create(s);
    cairo_set_source_rgb(cr, 1, 1, 1);
    cairo_paint(cr);
    cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    *ret_s = s;
    return cr;
}

static xr_code finish(cairo_surface_t *s, cairo_t *cr, const char *path, xr_error *err)
{
    cairo_status_t st = cairo_status(cr);
    cairo_destroy(cr);
    if (st == CAIRO_STATUS_SUCCESS) {
        cairo_surface_flush(s);
        st = cairo_surface_write_to_png(s, path);
    }
    cairo_surface_destroy(s);
    if (st != CAIRO_STATUS_SUCCESS)
        return xr_error_set(err, XR_E_IO, "could not write \"%s\": %s", path,
                            cairo_status_to_string(st));
    return XR_OK;
}

/* align: 0 left, 0.5 centre, 1 right (of x). */
static void text(cairo_t *cr, double x, double y, double size, double align, const char *s)
{
    cairo_text_extents_t te;
    cairo_set_font_size(cr, size);
    cairo_text_extents(cr, s, &te);
    cairo_move_to(cr, x - align * te.x_advance, y);
    cairo_show_text(cr, s);
}

static void vtext(cairo_t *cr, double x, double y, double size, const char *s)
{
    cairo_save(cr);
    cairo_translate(cr, x, y);
    cairo_rotate(cr, -M_PI / 2);
    text(cr, 0, 0, size, 0.5, s);
    cairo_restore(cr);
}

/* Unit-square axes with ticks every 0.1 and a grid; data (u,v) in [0,1] maps to px, py. */
static void axes(cairo_t *cr, const char *title, const char *xl, const char *yl)
{
    double pw = W - ML - MR, ph = H - MT - MB;
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_set_line_width(cr, 1);
    for (int i = 0; i <= 10; i++) {
        double x = ML + pw * i / 10, y = MT + ph * i / 10;
        cairo_move_to(cr, x, MT);
        cairo_line_to(cr, x, MT + ph);
        cairo_move_to(cr, ML, y);
        cairo_line_to(cr, ML + pw, y);
    }
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    cairo_rectangle(cr, ML, MT, pw, ph);
    cairo_stroke(cr);
    char b[16];
    for (int i = 0; i <= 10; i += 2) {
        snprintf(b, sizeof(b), "%.1f", i / 10.0);
        text(cr, ML + pw * i / 10, MT + ph + 18, 12, 0.5, b);
        text(cr, ML - 8, MT + ph - ph * i / 10 + 4, 12, 1, b);
    }
    text(cr, ML + pw / 2, MT + ph + 45, 14, 0.5, xl);
    vtext(cr, ML - 45, MT + ph / 2, 14, yl);
    text(cr, ML + pw / 2, MT - 18, 16, 0.5, title);
}

static double px(double u)
{
    return ML + (W - ML - MR) * u;
}

static double py(double v)
{
    return MT + (H - MT - MB) * (1 - v);
}

xr_code eval_plot_roc(const char *path, const eval_plot_curve *curves, size_t n_curves,
                      const char *title, xr_error *err)
{
    cairo_surface_t *s;
    cairo_t *cr = begin(&s, W, H);
    axes(cr, title, "1 - specificity (false positive rate)", "sensitivity (true positive rate)");
    double dash[] = {6, 4};
    cairo_set_dash(cr, dash, 2, 0);
    cairo_set_source_rgb(cr, 0.5, 0.5, 0.5);
    cairo_move_to(cr, px(0), py(0));
    cairo_line_to(cr, px(1), py(1));
    cairo_stroke(cr);
    cairo_set_dash(cr, NULL, 0, 0);
    cairo_set_line_width(cr, 2.5);
    for (size_t c = 0; c < n_curves; c++) {
        const double *col = palette[c % N_PALETTE];
        cairo_set_source_rgb(cr, col[0], col[1], col[2]);
        for (size_t i = 0; i < curves[c].n_points; i++) {
            double x = px(curves[c].points[i].fpr), y = py(curves[c].points[i].tpr);
            if (i == 0)
                cairo_move_to(cr, x, y);
            else
                cairo_line_to(cr, x, y);
        }
        cairo_stroke(cr);
    }
    /* legend in a white box at the bottom right, over the curves */
    double lx = px(0.42), lh = 20.0 * (double)n_curves + 10;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.92);
    cairo_rectangle(cr, lx - 8, py(0) - lh - 6, px(1) - lx + 2, lh);
    cairo_fill_preserve(cr);
    cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    for (size_t c = 0; c < n_curves; c++) {
        const double *col = palette[c % N_PALETTE];
        char b[256];
        if (curves[c].auc_defined)
            snprintf(b, sizeof(b), "%s (AUC %.3f)", curves[c].name, curves[c].auc);
        else
            snprintf(b, sizeof(b), "%s (AUC n/a)", curves[c].name);
        double ly = py(0) - lh + 12 + 20.0 * (double)c;
        cairo_set_source_rgb(cr, col[0], col[1], col[2]);
        cairo_rectangle(cr, lx, ly - 9 + 6, 18, 4);
        cairo_fill(cr);
        cairo_set_source_rgb(cr, 0, 0, 0);
        text(cr, lx + 24, ly + 6, 13, 0, b);
    }
    return finish(s, cr, path, err);
}

xr_code eval_plot_confusion(const char *path, const char *const *labels, size_t k,
                            const size_t *m, const char *title, xr_error *err)
{
    /* cells shrink with many classes; labels rotated on the x axis */
    double cell = k <= 4 ? 110 : k <= 8 ? 60 : k <= 16 ? 36 : 20;
    double left = 130, top = 60, bottom = 130;
    int w = (int)(left + cell * (double)k + 40), h = (int)(top + cell * (double)k + bottom);
    cairo_surface_t *s;
    cairo_t *cr = begin(&s, w, h);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text(cr, w / 2.0, 30, 16, 0.5, title);
    double fs = cell >= 60 ? 14 : cell >= 36 ? 11 : 8;
    for (size_t i = 0; i < k; i++) {
        size_t row = 0;
        for (size_t j = 0; j < k; j++)
            row += m[i * k + j];
        for (size_t j = 0; j < k; j++) {
            double f = row ? (double)m[i * k + j] / (double)row : 0;
            /* white -> blue by the share of the true class's samples */
            cairo_set_source_rgb(cr, 1 - 0.85 * f, 1 - 0.6 * f, 1 - 0.25 * f);
            double x = left + cell * (double)j, y = top + cell * (double)i;
            cairo_rectangle(cr, x, y, cell, cell);
            cairo_fill_preserve(cr);
            cairo_set_source_rgb(cr, 0.6, 0.6, 0.6);
            cairo_set_line_width(cr, 1);
            cairo_stroke(cr);
            char b[32];
            snprintf(b, sizeof(b), "%zu", m[i * k + j]);
            if (f > 0.6)
                cairo_set_source_rgb(cr, 1, 1, 1);
            else
                cairo_set_source_rgb(cr, 0, 0, 0);
            text(cr, x + cell / 2, y + cell / 2 + fs / 3, fs, 0.5, b);
        }
        cairo_set_source_rgb(cr, 0, 0, 0);
        text(cr, left - 6, top + cell * (double)i + cell / 2 + 4, fs, 1, labels[i]);
        cairo_save(cr);
        cairo_translate(cr, left + cell * (double)i + cell / 2 + 4, top + cell * (double)k + 8);
        cairo_rotate(cr, -M_PI / 2);
        text(cr, 0, 0, fs, 1, labels[i]);
        cairo_restore(cr);
    }
    text(cr, left + cell * (double)k / 2, (double)h - 12, 14, 0.5, "predicted");
    vtext(cr, 20, top + cell * (double)k / 2, 14, "true");
    return finish(s, cr, path, err);
}

xr_code eval_plot_reliability(const char *path, const eval_bin *bins, size_t n_bins, double ece,
                              const char *x_label, const char *y_label, const char *title,
                              xr_error *err)
{
    cairo_surface_t *s;
    cairo_t *cr = begin(&s, W, H);
    char t[300];
    snprintf(t, sizeof(t), "%s (ECE %.3f)", title, ece);
    axes(cr, t, x_label, y_label);
    double dash[] = {6, 4};
    cairo_set_dash(cr, dash, 2, 0);
    cairo_set_source_rgb(cr, 0.5, 0.5, 0.5);
    cairo_move_to(cr, px(0), py(0));
    cairo_line_to(cr, px(1), py(1));
    cairo_stroke(cr);
    cairo_set_dash(cr, NULL, 0, 0);
    size_t total = 0, mx = 0;
    for (size_t b = 0; b < n_bins; b++) {
        total += bins[b].n;
        mx = bins[b].n > mx ? bins[b].n : mx;
    }
    /* bars: observed frequency per bin; grey strip at the bottom: share of samples */
    for (size_t b = 0; b < n_bins; b++) {
        double x0 = (double)b / (double)n_bins, x1 = (double)(b + 1) / (double)n_bins;
        if (bins[b].n) {
            cairo_set_source_rgba(cr, palette[0][0], palette[0][1], palette[0][2], 0.7);
            cairo_rectangle(cr, px(x0) + 2, py(bins[b].observed), px(x1) - px(x0) - 4,
                            py(0) - py(bins[b].observed));
            cairo_fill(cr);
            cairo_set_source_rgb(cr, palette[1][0], palette[1][1], palette[1][2]);
            cairo_arc(cr, px(bins[b].mean_predicted), py(bins[b].observed), 4, 0, 2 * M_PI);
            cairo_fill(cr);
        }
        if (mx) {
            double hh = 0.12 * (double)bins[b].n / (double)mx;
            cairo_set_source_rgba(cr, 0.3, 0.3, 0.3, 0.5);
            cairo_rectangle(cr, px(x0) + 2, py(hh), px(x1) - px(x0) - 4, py(0) - py(hh));
            cairo_fill(cr);
        }
    }
    cairo_set_source_rgb(cr, 0, 0, 0);
    char b[128];
    snprintf(b, sizeof(b), "bars: observed; dots: mean predicted; grey: samples (n=%zu)", total);
    text(cr, px(0.02), py(0.97), 12, 0, b);
    return finish(s, cr, path, err);
}
