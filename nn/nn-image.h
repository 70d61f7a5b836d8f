/*
 * nn/nn-image.h: image files (PNG, JPEG) into float planes, and the preprocessing that turns a
 * float image into a model's input tensor exactly as the training side (tools/xreg_preprocess.py:
 * PIL + torchvision) does. Knows nothing of DICOM: a decoded DICOM frame enters as an nn_image
 * view over its float pixels.
 *
 *     nn_image img = {0};
 *     nn_image_params ip = nn_image_params_default();
 *     if (nn_image_read_file("knee.png", &ip, &img, &err)) ...;   // [0,1] floats, planar
 *
 *     nn_preproc_spec spec;
 *     const char *keys[] = {"xreg.input_size", "xreg.channels", "xreg.mean", "xreg.std",
 *                           "xreg.resize"};
 *     const char *vals[] = {"224,224", "3", "0.485,0.456,0.406", "0.229,0.224,0.225",
 *                           "letterbox"};
 *     if (nn_preproc_spec_from_metadata(keys, vals, 5, &spec, &err)) ...;
 *     nn_preproc *pp;
 *     if (nn_preproc_new(&spec, &pp, &err)) ...;
 *     float *input = malloc(nn_preproc_output_floats(pp) * sizeof(float));
 *     if (nn_preproc_run(pp, &img, input, nn_preproc_output_floats(pp), &err)) ...;
 *     nn_image_done(&img);
 *     pp = nn_preproc_free(pp);
 *
 * Pixel values. Every nn_image holds floats in [0,1], planar (channel-major: plane c starts at
 * data + c * width * height, rows top to bottom), like a torch CHW tensor from ToTensor. Decoding
 * follows what PIL 9.4 + torchvision ToTensor give for the same file, so that a model trained on
 * PIL-loaded images sees the same numbers here:
 *   - 8-bit samples: v / 255 (float32 division, as ToTensor's .div(255)).
 *   - 1/2/4-bit gray PNG: scaled to 8 bits first (x255, x85, x17: PIL's "1", "L;2", "L;4"), then /255.
 *   - 16-bit gray PNG (PIL mode "I", which ToTensor leaves unscaled): v / 65535. This is the
 *     definition of the training side too (tools/xreg_preprocess.py load_image).
 *   - 16-bit RGB, RGBA and gray+alpha PNG: PIL keeps the high byte ("RGB;16B", "LA;16B"), so do we.
 *   - Alpha is dropped, not composited (PIL convert("RGB") / convert("L")); palettes are looked up
 *     (tRNS ignored); gamma, sBIT, ICC profiles and EXIF orientation are ignored, as PIL does.
 *   - JPEG through the same libjpeg-turbo with PIL's settings (islow DCT, fancy upsampling);
 *     CMYK/YCCK JPEG and 12-bit JPEG are XR_E_UNSUPPORTED.
 *   - Colour mode: NN_IMAGE_NATIVE keeps gray sources at 1 channel and gives colour sources 3 (RGB);
 *     NN_IMAGE_GRAY turns colour into PIL's convert("L") luma, computed on the 8-bit values:
 *     (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, then /255.
 *
 * Thread rule: every function is reentrant; an nn_preproc is used by one thread at a time.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "xr-error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Images
 */
typedef struct nn_image {
    uint32_t width, height;
    uint32_t channels; /* 1 (gray) or 3 (RGB) */
    float *data;       /* channels x height x width, planar, values in [0,1]; malloc'ed by the
                          readers, freed by nn_image_done (a caller-made view sets owned=false) */
    bool owned;        /* data is freed by nn_image_done */
} nn_image;

typedef enum nn_image_color {
    NN_IMAGE_NATIVE, /* gray stays 1 channel, colour becomes RGB */
    NN_IMAGE_GRAY,   /* always 1 channel: colour through PIL's convert("L") luma */
    NN_IMAGE_COLOR_MAX,
} nn_image_color;

typedef enum nn_image_format {
    NN_IMAGE_FORMAT_UNKNOWN,
    NN_IMAGE_FORMAT_PNG,
    NN_IMAGE_FORMAT_JPEG,
    NN_IMAGE_FORMAT_MAX,
} nn_image_format;

typedef struct nn_image_params {
    uint32_t max_width, max_height; /* checked against the header, before any pixel buffer */
    uint64_t max_decoded_bytes;     /* of the float image (width x height x channels x 4) */
    uint64_t max_file_bytes;        /* nn_image_read_file only */
    nn_image_color color;
} nn_image_params;

/* Defaults from xr-limits.h (XR_IMAGE_*_DEFAULT), NN_IMAGE_NATIVE. */
nn_image_params nn_image_params_default(void);

/* "png", "jpeg" or "unknown" from the first bytes (signature only; nothing is validated). */
nn_image_format nn_image_format_detect(const void *buf, size_t n_bytes);
const char *nn_image_format_name(nn_image_format f);
const char *nn_image_color_name(nn_image_color c);

/*
 * Decode a PNG or JPEG held in memory into *ret (which the caller zeroes or has passed to
 * nn_image_done). Returns XR_E_INPUT for a file that is neither or is damaged (truncated, bad
 * CRC, bad Huffman data; the message says what and where), XR_E_UNSUPPORTED for a valid
 * encoding not handled (CMYK or 12-bit JPEG), XR_E_LIMIT when the declared size passes params
 * (before the pixel buffer is allocated), XR_E_NOMEM. On failure *ret is left zeroed.
 */
__attribute__((warn_unused_result)) xr_code nn_image_read_buffer(const void *buf, size_t n_bytes,
                                                                 const nn_image_params *params,
                                                                 nn_image *ret, xr_error *err);
/* The same from a file; errors are prefixed with the path. XR_E_IO if it cannot be read. */
__attribute__((warn_unused_result)) xr_code nn_image_read_file(const char *path,
                                                               const nn_image_params *params,
                                                               nn_image *ret, xr_error *err);
/* Free owned data and zero the struct; accepts a zeroed struct. */
void nn_image_done(nn_image *img);

/* ---------------------------------------------------------------------------------------------
 * Preprocessing: resize (torchvision resize, bilinear, antialias=True), letterbox or stretch,
 * gray replicated to three channels, (x - mean) / std, CHW float32.
 */
#define NN_PREPROC_CHANNELS_MAX 3

typedef enum nn_resize_mode {
    NN_RESIZE_STRETCH,   /* to H x W, aspect ignored */
    NN_RESIZE_LETTERBOX, /* aspect kept, centred on a 0 (black) canvas; see nn_preproc_geometry */
    NN_RESIZE_MODE_MAX,
} nn_resize_mode;

typedef struct nn_preproc_spec {
    uint32_t height, width; /* the model's input size */
    uint32_t channels;      /* 1 or 3 */
    float mean[NN_PREPROC_CHANNELS_MAX], std[NN_PREPROC_CHANNELS_MAX];
    bool normalize;         /* false: skip (x - mean) / std (xregctl mean-std) */
    nn_resize_mode resize;
} nn_preproc_spec;

/* How to read images for this spec: NN_IMAGE_GRAY for a 1-channel model, else NN_IMAGE_NATIVE. */
nn_image_color nn_preproc_spec_color(const nn_preproc_spec *spec);

/* 224 x 224, 3 channels, mean 0 and std 1 (no-op normalization), stretch, normalize = true. */
nn_preproc_spec nn_preproc_spec_default(void);

const char *nn_resize_mode_name(nn_resize_mode m);
/* "stretch" | "letterbox"; NN_RESIZE_MODE_MAX when unrecognized. */
nn_resize_mode nn_resize_mode_from_string(const char *s);

/*
 * Fill *ret from a model's metadata given as parallel key/value arrays (every metadata_props
 * entry may be passed; keys outside xreg.* preprocessing are ignored). Starts from
 * nn_preproc_spec_default(); reads xreg.input_size ("H,W"), xreg.channels ("1" | "3"),
 * xreg.mean and xreg.std (one float per channel, or one value used for every channel; std > 0),
 * xreg.resize ("stretch" | "letterbox"). A malformed value is XR_E_INPUT naming the key, the
 * value and what was expected; a missing xreg.input_size is XR_E_INPUT (the other keys default).
 */
__attribute__((warn_unused_result)) xr_code nn_preproc_spec_from_metadata(
    const char *const *keys, const char *const *values, size_t n, nn_preproc_spec *ret,
    xr_error *err);
/* Check ranges (sizes 1..XR_IMAGE_MODEL_DIM_MAX, channels, std > 0, finite); XR_E_INPUT. */
__attribute__((warn_unused_result)) xr_code nn_preproc_spec_validate(const nn_preproc_spec *spec,
                                                                     xr_error *err);

/*
 * Where a w x h image lands in the model's H x W input: resized to *ret_h x *ret_w and placed
 * at (*ret_top, *ret_left). Stretch: H x W at (0,0). Letterbox: if H*w <= W*h the height is
 * filled (rh = H, rw = round_half_up(w*H/h) = (2*w*H + h) / (2*h) in integers, at least 1),
 * otherwise the width (rw = W, rh = (2*h*W + w) / (2*w)); top = (H - rh) / 2, left = (W - rw) / 2
 * (floor: an odd margin leaves the extra row/column at the bottom/right).
 */
void nn_preproc_geometry(const nn_preproc_spec *spec, uint32_t w, uint32_t h, uint32_t *ret_h,
                         uint32_t *ret_w, uint32_t *ret_top, uint32_t *ret_left);

typedef struct nn_preproc nn_preproc;

/* Validate spec and make a preprocessor; XR_E_INPUT for a bad spec, XR_E_NOMEM. */
__attribute__((warn_unused_result)) xr_code nn_preproc_new(const nn_preproc_spec *spec,
                                                           nn_preproc **ret, xr_error *err);
nn_preproc *nn_preproc_free(nn_preproc *pp);
const nn_preproc_spec *nn_preproc_get_spec(const nn_preproc *pp);
/* channels x height x width of the spec. */
size_t nn_preproc_output_floats(const nn_preproc *pp);

/*
 * Write the model input for img (1 or 3 channels, values as nn_image) into out, CHW float32,
 * out_floats = nn_preproc_output_floats. A 1-channel image is replicated for a 3-channel model;
 * a 3-channel image for a 1-channel model is XR_E_INPUT (read it with NN_IMAGE_GRAY).
 *
 * Scratch: the preprocessor keeps one buffer for the horizontal pass (img->height x resized
 * width x channels floats) and the filter tables; they grow to the largest image seen and are
 * reused, so calls allocate nothing once warmed up. XR_E_NOMEM if growing fails, XR_E_LIMIT if
 * the image passes XR_IMAGE_DIM_MAX.
 */
__attribute__((warn_unused_result)) xr_code nn_preproc_run(nn_preproc *pp, const nn_image *img,
                                                           float *out, size_t out_floats,
                                                           xr_error *err);

/*
 * Resize one float plane set (channels planes of in_h x in_w) to out_h x out_w exactly as
 * torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=True) does in
 * float32 (PyTorch 1.13 aten upsample_bilinear2d_aa: PIL's separable triangle filter, support
 * scaled by the downscale factor, horizontal pass first). Output row stride is out_stride floats
 * and plane stride out_plane floats, so the result can land inside a letterbox canvas. scratch
 * as in nn_preproc_run. Exposed for tests and tools.
 */
__attribute__((warn_unused_result)) xr_code nn_preproc_resize(nn_preproc *pp, const float *in,
                                                              uint32_t channels, uint32_t in_h,
                                                              uint32_t in_w, float *out,
                                                              uint32_t out_h, uint32_t out_w,
                                                              size_t out_stride, size_t out_plane,
                                                              xr_error *err);

#ifdef __cplusplus
}
#endif
