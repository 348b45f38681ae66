/* Plane kernels of max pooling (forward) and average pooling (backward), compiled once per
 * instruction-set level (see _simd.h).
 *
 * The feature maps of a CNN have short rows (7 to 112 outputs), so a loop along one output row
 * spends much of its time in its prologue, its vector remainder and the border windows that
 * overlap the padding. The max forward therefore first splits the plane, padded with -inf, into
 * its stride_h x stride_w phases (phase (q, p) holds the padded rows r*sh + q, columns c*sw + p):
 * in a phase plane with rows of `cols` elements, tap (i, j) of every output of the plane lies at
 * one fixed offset from lane oh * cols + ow, so each tap is one long unit-stride sweep over all
 * the outputs at once, with no border windows and no remainders. Planes too large for the
 * caches go in bands of output rows, each split on its own. A -inf tap never beats the
 * running maximum (strict >, from -inf), so the padding never wins; a window that ends at -inf
 * reports its first tap inside the input, as in PyTorch. The lanes past out_w in each row compute
 * harmless values that are never stored.
 */
#ifndef CONVX_POOL_H
#define CONVX_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include "_simd.h"

#define CONVX_POOL_BLOCK 16

/* The tap loops are instantiated with literal geometry and flags; only inlined do they vectorise. */
#if defined(__GNUC__)
#define CONVX_POOL_INLINE static inline __attribute__((always_inline))
#else
#define CONVX_POOL_INLINE static inline
#endif

#if defined(_MSC_VER)
#define CONVX_SIMD_OR(var)
#else
#define CONVX_SIMD_OR(var) CONVX_PRAGMA(omp simd reduction(|:var))
#endif

#define CONVX_POOL_JOIN2(a, b) a##_##b
#define CONVX_POOL_JOIN(a, b) CONVX_POOL_JOIN2(a, b)
#define CONVX_POOL(name) CONVX_POOL_JOIN(name, PS)

typedef struct {
    ptrdiff_t height, width, out_h, out_w;
    ptrdiff_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
    /* Taps [row_lo[oh], row_hi[oh]) of output row oh land inside the input; same for columns. */
    const int64_t *row_lo, *row_hi, *col_lo, *col_hi;
    /* Output columns [inner_lo, inner_hi) use every tap of the kernel's width. */
    ptrdiff_t inner_lo, inner_hi;
} convx_pool_geometry;

/* The max forward's layout (see convx_max_pool_plane), for a band of `band` output rows: the rows of
 * the padded plane it reads split into stride_h x stride_w phase planes of rows x cols elements
 * (each followed by a block of slack), outputs (oh0 + r, o) at lane r * cols + o. */
typedef struct {
    ptrdiff_t band, rows, cols, plane, lanes;
} convx_pool_phases;

/* Elements of the phase planes of one band at most (unless a single output row needs more):
 * within the core's caches, whatever the plane. */
#define CONVX_POOL_BAND_BUDGET (1 << 15)

static inline convx_pool_phases convx_max_pool_phases(const convx_pool_geometry *g) {
    convx_pool_phases f;
    const ptrdiff_t sh = g->stride_h, sw = g->stride_w;
    const ptrdiff_t row_reach = (g->kernel_h - 1) * g->dilation_h / sh;
    const ptrdiff_t col_reach = g->out_w + (g->kernel_w - 1) * g->dilation_w / sw;
    const ptrdiff_t cols = (g->pad_w + g->width + sw - 1) / sw;
    f.cols = col_reach > cols ? col_reach : cols;
    f.band = CONVX_POOL_BAND_BUDGET / (sh * sw * f.cols) - row_reach;
    if (f.band > g->out_h) f.band = g->out_h;
    if (f.band < 1) f.band = 1;
    f.rows = f.band + row_reach;
    f.plane = f.rows * f.cols + CONVX_POOL_BLOCK;
    f.lanes = (f.band * f.cols + CONVX_POOL_BLOCK - 1) / CONVX_POOL_BLOCK * CONVX_POOL_BLOCK;
    return f;
}

/* 2x2 stride-2 windows without padding, dilation or windows past the plane's end: read directly. */
static inline int convx_max_pool_2x2_applies(const convx_pool_geometry *g) {
    return g->kernel_h == 2 && g->kernel_w == 2 && g->stride_h == 2 && g->stride_w == 2 && g->dilation_h == 1 &&
           g->dilation_w == 1 && g->pad_h == 0 && g->pad_w == 0 && 2 * g->out_h <= g->height &&
           2 * g->out_w <= g->width;
}

/* Scratch elements one thread needs for convx_max_pool_plane: the phase planes, the lanes a last
 * block may read past them, the running maxima and offsets, and a cache line so that threads'
 * slots share none (just the line where the 2x2 kernel reads the input directly). */

static inline ptrdiff_t convx_max_pool_scratch(const convx_pool_geometry *g) {
    if (convx_max_pool_2x2_applies(g)) return 16;
    const convx_pool_phases f = convx_max_pool_phases(g);
    return g->stride_h * g->stride_w * f.plane + f.cols + CONVX_POOL_BLOCK + 2 * f.lanes + 16;
}

/* Scratch int32 elements for convx_max_backward_plane: one code per output, and a cache line. */
static inline ptrdiff_t convx_max_backward_scratch(ptrdiff_t out_h, ptrdiff_t out_w) {
    return (out_h * out_w + 15) / 16 * 16 + 16;
}

/* corners[oh * out_w + ow] = the flat index of the top-left corner of 2x2 block (oh, ow), if the
 * blocks fit the plane (returns 0 and leaves corners alone if they do not). */
static inline int convx_max_backward_corners(ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h, ptrdiff_t out_w,
                                             int64_t *corners) {
    if (2 * out_h > height || 2 * out_w > width) return 0;
    for (ptrdiff_t oh = 0; oh < out_h; oh++)
        for (ptrdiff_t ow = 0; ow < out_w; ow++) corners[oh * out_w + ow] = 2 * oh * width + 2 * ow;
    return 1;
}

/* The general average backward (convx_avg_gather_plane) keeps the shares of the output rows over
 * one input row: at most ceil(kernel_h / stride_h) of them, and at most out_h (a kernel far taller
 * than the input, stride 1, would otherwise ask for a ring of kernel_h rows), in a ring of rows a
 * whole number of cache lines apart. */
static inline ptrdiff_t convx_avg_share_rows(const convx_pool_geometry *g) {
    const ptrdiff_t over_a_row = (g->kernel_h + g->stride_h - 1) / g->stride_h;
    return over_a_row < g->out_h ? over_a_row : g->out_h;
}

static inline ptrdiff_t convx_avg_share_stride(const convx_pool_geometry *g) {
    return (g->out_w + 15) / 16 * 16;
}

/* lo[w], hi[w]: the windows ow in [lo, hi) whose columns hold input column w. */
static inline void convx_avg_column_windows(const convx_pool_geometry *g, int64_t *lo, int64_t *hi) {
    const ptrdiff_t kw = g->kernel_w, sw = g->stride_w, pw = g->pad_w;
    for (ptrdiff_t w = 0; w < g->width; w++) {
        ptrdiff_t a = w + pw - kw + 1 > 0 ? (w + pw - kw + 1 + sw - 1) / sw : 0, b = (w + pw) / sw + 1;
        if (b > g->out_w) b = g->out_w;
        if (b < a) b = a;
        lo[w] = a;
        hi[w] = b;
    }
}

/* [*first, *end): the output rows oh whose windows hold input row h (oh*sh - ph <= h < oh*sh - ph + kh),
 * empty where none does. */
static inline void convx_avg_row_windows(const convx_pool_geometry *g, ptrdiff_t h, ptrdiff_t *first,
                                         ptrdiff_t *end) {
    const ptrdiff_t kh = g->kernel_h, sh = g->stride_h, ph = g->pad_h;
    ptrdiff_t a = h + ph - kh + 1 > 0 ? (h + ph - kh + 1 + sh - 1) / sh : 0, b = (h + ph) / sh + 1;
    if (b > g->out_h) b = g->out_h;
    *first = a;
    *end = b;
}

/* Scratch elements for either average backward: the ring of shares (one row for the tiled one). */
static inline ptrdiff_t convx_avg_backward_scratch(const convx_pool_geometry *g) {
    return convx_avg_share_rows(g) * convx_avg_share_stride(g) + 16;
}

/* The int32 array after n elements from ptr, at the next address that is a multiple of 4 (the
 * same place for float and double; up to 3 bytes on for the 8-bit types, whose ptr + n may be
 * anywhere: the callers' 64 bytes of slack hold them). */
#define CONVX_POOL_INT32_AFTER(ptr, n) ((int32_t *)(void *)(((uintptr_t)((ptr) + (n)) + 3) & ~(uintptr_t)3))

#define PT float
#define PU uint32_t
#define PS f
#include "_pool_body.h"
#undef PT
#undef PU
#undef PS

#define PT double
#define PU uint64_t
#define PS d
#include "_pool_body.h"
#undef PT
#undef PU
#undef PS

/* The 8-bit direct max forward (_pool_direct_body.h) numbers a window's taps in a byte. */
#define CONVX_POOL_DIRECT_TAPS 256

/* Bytes of scratch one thread needs for it: a maximum and a tap number per output column. */
static inline ptrdiff_t convx_max_direct_scratch(const convx_pool_geometry *g) {
    return 2 * g->out_w;
}

/* The NaN tests (v != v) of the shared max code are always false for integers, as intended. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wtautological-compare"
#endif
#define CONVX_POOL_MAX_ONLY 1
#define PT int8_t
#define PS i8
#include "_pool_body.h"
#include "_pool_direct_body.h"
#undef PT
#undef PS

#define PT uint8_t
#define PS u8
#include "_pool_body.h"
#include "_pool_direct_body.h"
#undef PT
#undef PS
#undef CONVX_POOL_MAX_ONLY
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#endif
