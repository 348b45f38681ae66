/* Depthwise convolution (one input channel per group) by long sweeps over zero-padded, phase-split
 * copies of the planes, compiled once per instruction-set level (see _simd.h).
 *
 * The planes of the depthwise layers of MobileNet- and EfficientNet-style nets are small (4x4 to
 * 56x56) and often strided: a loop along one output row runs 4-16 outputs, most of its time in
 * its prologue, its vector remainder and the taps it clips at the borders. So, as for max
 * pooling (_pool.h), each plane is first copied into a buffer whose zeros are the padding and
 * whose stride phases are planes of their own: phase (q, p) holds the padded rows r*sh + q and
 * columns c*sw + p. In that buffer tap (i, j) of every output of the plane lies at one fixed
 * offset from the output's lane (r * cols + ow), so each tap is one unit-stride sweep over all of
 * the plane's outputs at once, a register block of lanes summing the taps (16 at a time: GCC
 * unrolls no longer loops whole) before it is stored. The lanes past out_w in each row compute
 * values that are never stored. The sweeps' results are then copied to the output, its lines
 * prefetched for writing first.
 *
 * Two layouts make the padding cheap to share:
 *  - a row's left padding is the previous row's right padding (the buffer rows hold the input
 *    columns from 0, then zeros: a tap left of column 0 reads the row above's zeros), and
 *  - small planes of one channel (the images of a batch share their filter) lie one below the
 *    other in one buffer, each "slot" its rows and then the zero rows that are both its bottom
 *    padding and the next slot's top padding, and one sweep runs over all of them.
 * Planes too large for one buffer within the budget go in bands of output rows, each a slot of
 * its own.
 *
 * The forward sweeps the input's buffer ("gather" layout). The weight gradient sweeps the same
 * buffer against grad_out laid out as the lanes (zeros in the lanes never stored), one dot
 * product per tap. The input gradient is the forward's adjoint: grad_in's stride phases
 * (h + ph = a*sh + q) each take the taps i with i*dh = q (mod sh), at offsets -(i*dh div sh) rows
 * and -(j*dw div sw) columns in grad_out, so each phase of grad_in is again one sweep per tap,
 * over grad_out copied into the same kind of buffer (the "scatter" layout, unsplit), and the
 * phases are interleaved into grad_in at the end.
 *
 * The padding's zeros take part in the products as in im2col (so a non-finite weight makes the
 * forward's border outputs NaN, as the definition and PyTorch's im2col path do). Two places
 * would multiply zeros the definition never multiplies: the input gradient's gather reads
 * grad_out's padding (a non-finite weight there would give NaN where the scatter gives +-inf:
 * the caller sends those channels to the direct loops, _depthwise.pxi), and the weight
 * gradient's lanes past out_w pair a zero of grad_out with a real input value (an infinite input
 * would give NaN: once a plane holding one has been through a thread's buffer, that thread sums
 * the stored lanes only).
 */
#ifndef CONVX_DEPTHWISE_H
#define CONVX_DEPTHWISE_H

#include <stddef.h>
#include <string.h>
#include "_simd.h"

typedef struct {
    ptrdiff_t height, width, out_h, out_w;
    ptrdiff_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
} convx_dw_geometry;

/* Where the planes of one call lie in a thread's buffer (see the header comment). Source planes:
 * the input (forward, weight gradient) or grad_out (input gradient); buffer row G of slot p
 * (G = head_rows + p * slot_rows + r) holds source row first_row + r, where first_row is the band's
 * (zeros outside the source); rows before slot 0 hold source rows first_row - head_rows + G. */
typedef struct {
    ptrdiff_t planes;     /* slots per buffer: planes swept together (1 when banded) */
    ptrdiff_t band;       /* lane rows each slot computes: output rows (gather), grad_in phase rows (scatter) */
    ptrdiff_t slot_rows;  /* buffer rows of one slot (all phases; a multiple of row_phases) */
    ptrdiff_t head_rows;  /* buffer rows before slot 0 (scatter: the taps reach that far up) */
    ptrdiff_t tail_rows;  /* zero buffer rows after the last slot that the stored lanes read */
    ptrdiff_t row_phases, col_phases;
    ptrdiff_t cols;       /* elements of a row in each phase plane */
    ptrdiff_t lane_rows;  /* lane rows per slot (slot_rows / row_phases) */
    ptrdiff_t head;       /* zero elements before each phase plane's first row */
    ptrdiff_t phase;      /* elements of one phase plane, with its head and slack */
    ptrdiff_t lanes;      /* lanes of a full buffer: planes * lane_rows * cols */
    ptrdiff_t taps;
} convx_dw_layout;

/* Bytes a register block of the gather sweeps holds (four AVX-512 vectors: 0.86x the 5x5 forward's
 * time of two, no gain from eight), and of the weight gradient's accumulators per tap (one); the
 * sweeps run whole blocks, reading up to a block past the last lane into the buffers' slack. */
#define CONVX_DW_GATHER_BYTES 256
#define CONVX_DW_WEIGHT_BYTES 64
#define CONVX_DW_SLACK 128

/* Ask for the lines of bytes from p for writing (prefetchw), a cache line at a time. */
static inline void convx_dw_prefetch_write(void *p, size_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
    for (size_t i = 0; i < bytes; i += 64) __builtin_prefetch((char *)p + i, 1, 2);
#else
    (void)p;
    (void)bytes;
#endif
}

static inline ptrdiff_t convx_dw_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
static inline ptrdiff_t convx_dw_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
static inline ptrdiff_t convx_dw_ceil(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b; }
static inline ptrdiff_t convx_dw_round(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b * b; }
/* floor division and modulo for a possibly negative a, b > 0 */
static inline ptrdiff_t convx_dw_floordiv(ptrdiff_t a, ptrdiff_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
static inline ptrdiff_t convx_dw_floormod(ptrdiff_t a, ptrdiff_t b) { return a - convx_dw_floordiv(a, b) * b; }

/* Planes per buffer: at most `most`, in groups as equal as the batch allows (a short last group
 * would leave the threads that take it idle for the rest). */
static inline ptrdiff_t convx_dw_planes(ptrdiff_t batch, ptrdiff_t most) {
    most = convx_dw_max(1, convx_dw_min(batch, most));
    return convx_dw_ceil(batch, convx_dw_ceil(batch, most));
}

static inline void convx_dw_finish_layout(convx_dw_layout *L, ptrdiff_t reach_rows, ptrdiff_t reach_cols) {
    L->lane_rows = L->slot_rows / L->row_phases;
    L->lanes = L->planes * L->lane_rows * L->cols;
    /* rows the (never stored) lanes of a last, partial block and their taps may read past the slots */
    const ptrdiff_t slack_rows = reach_rows + convx_dw_ceil(CONVX_DW_SLACK + reach_cols, L->cols) + 1;
    L->phase = convx_dw_round(L->head + (L->head_rows / L->row_phases + L->planes * L->lane_rows + L->tail_rows +
                                         slack_rows) * L->cols, 16);
}

/* The gather layout (forward, weight gradient) for planes of g, with at most `batch` of them per
 * buffer and a buffer of about `budget` elements (more where one output row needs more). */
static inline convx_dw_layout convx_dw_gather_layout(const convx_dw_geometry *g, ptrdiff_t batch, ptrdiff_t budget) {
    convx_dw_layout L;
    const ptrdiff_t sh = g->stride_h, sw = g->stride_w, kh = g->kernel_h, kw = g->kernel_w;
    const ptrdiff_t dh = g->dilation_h, dw = g->dilation_w, ph = g->pad_h, pw = g->pad_w;
    L.row_phases = sh;
    L.col_phases = sw;
    L.taps = kh * kw;
    L.head_rows = 0;
    /* a row: the input's columns, then zeros enough for the left padding of the row below and
     * for the rightmost tap of the last output; at least out_w lanes per phase row */
    const ptrdiff_t row = convx_dw_round(
        convx_dw_max(convx_dw_max(g->width + pw, (g->out_w - 1) * sw + (kw - 1) * dw - pw + 1), g->out_w * sw), sw);
    L.cols = row / sw;
    L.head = convx_dw_round(convx_dw_ceil(pw, sw) + 1, 16);
    /* a slot: the top padding, the input's rows, then zeros that are the next slot's top padding,
     * enough of them that its taps reach no further than that (the bottom padding may be the
     * larger: 'same' with an even kernel) */
    const ptrdiff_t reach = (g->out_h - 1) * sh + (kh - 1) * dh + 1;  /* rows the stored lanes read */
    const ptrdiff_t slot = convx_dw_round(convx_dw_max(convx_dw_max(g->height + ph, g->out_h * sh), reach - ph), sh);
    if (slot * row <= budget) {
        L.planes = convx_dw_planes(batch, budget / (slot * row));
        L.band = g->out_h;
        L.slot_rows = slot;
        L.tail_rows = convx_dw_ceil(convx_dw_max(0, reach - slot), sh);
    } else {
        ptrdiff_t band = (budget / row - (kh - 1) * dh - 1) / sh + 1;
        band = convx_dw_max(1, convx_dw_min(band, g->out_h));
        L.planes = 1;
        L.band = band;
        L.slot_rows = convx_dw_round(convx_dw_max((band - 1) * sh + (kh - 1) * dh + 1, band * sh), sh);
        L.tail_rows = 0;
    }
    convx_dw_finish_layout(&L, (kh - 1) * dh / sh + 1, (kw - 1) * dw / sw + 1);
    return L;
}

/* The scatter layout (input gradient): grad_out's planes, unsplit, below head_rows rows that the
 * taps reach up into; lane (t, b) of a slot is grad_in's phase row a = first + t, column b. */
static inline convx_dw_layout convx_dw_scatter_layout(const convx_dw_geometry *g, ptrdiff_t batch, ptrdiff_t budget) {
    convx_dw_layout L;
    const ptrdiff_t sh = g->stride_h, sw = g->stride_w, kh = g->kernel_h, kw = g->kernel_w;
    const ptrdiff_t reach_h = (kh - 1) * g->dilation_h / sh, reach_w = (kw - 1) * g->dilation_w / sw;
    const ptrdiff_t phase_rows = convx_dw_ceil(g->height + g->pad_h, sh);
    const ptrdiff_t phase_cols = convx_dw_ceil(g->width + g->pad_w, sw);
    L.row_phases = 1;
    L.col_phases = 1;
    L.taps = kh * kw;
    L.head_rows = reach_h;
    L.tail_rows = 0;
    L.cols = convx_dw_max(phase_cols, g->out_w + reach_w);
    L.head = convx_dw_round(reach_w + 1, 16);
    /* a slot: grad_out's rows, then zeros for the next slot's taps to reach up into */
    const ptrdiff_t slot = convx_dw_max(phase_rows, g->out_h + reach_h);
    /* the buffer, and sh * sw phases of lanes as large */
    const ptrdiff_t per_row = L.cols * (1 + sh * sw);
    if (slot * per_row <= budget) {
        L.planes = convx_dw_planes(batch, budget / (slot * per_row));
        L.band = phase_rows;
        L.slot_rows = slot;
    } else {
        L.planes = 1;
        L.band = convx_dw_max(1, convx_dw_min(budget / per_row - reach_h, phase_rows));
        L.slot_rows = L.band;
    }
    convx_dw_finish_layout(&L, 1, 1);
    return L;
}

/* Per-thread scratch elements of each operation (a multiple of 16, so that slots start on cache
 * lines): the buffer, then the lanes (gather: one buffer of results; weight: grad_out's lanes and
 * the accumulators of `multiplier` filters; scatter: sh * sw phases of results and the filter's
 * taps in phase order). */
static inline ptrdiff_t convx_dw_lanes_size(const convx_dw_layout *L) {
    return convx_dw_round(L->lanes + CONVX_DW_SLACK, 16);
}

static inline ptrdiff_t convx_dw_forward_scratch(const convx_dw_layout *L) {
    return L->row_phases * L->col_phases * L->phase + convx_dw_lanes_size(L) + 16;
}

static inline ptrdiff_t convx_dw_weight_scratch(const convx_dw_layout *L, ptrdiff_t multiplier) {
    return L->row_phases * L->col_phases * L->phase + convx_dw_lanes_size(L) + multiplier * L->taps * 16 + 16;
}

static inline ptrdiff_t convx_dw_input_scratch(const convx_dw_layout *L, const convx_dw_geometry *g) {
    return L->phase + g->stride_h * g->stride_w * convx_dw_lanes_size(L) + convx_dw_round(L->taps, 16) + 16;
}

/* off[i*kw + j]: where tap (i, j) of lane 0 lies in the gather buffer. */
static inline void convx_dw_gather_offsets(const convx_dw_geometry *g, const convx_dw_layout *L, ptrdiff_t *off) {
    for (ptrdiff_t i = 0; i < g->kernel_h; i++) {
        for (ptrdiff_t j = 0; j < g->kernel_w; j++) {
            const ptrdiff_t row = i * g->dilation_h, col = j * g->dilation_w - g->pad_w;
            const ptrdiff_t q = row % g->stride_h, p = convx_dw_floormod(col, g->stride_w);
            off[i * g->kernel_w + j] = (q * g->stride_w + p) * L->phase + L->head +
                                       (row / g->stride_h) * L->cols + convx_dw_floordiv(col, g->stride_w);
        }
    }
}

/* The taps of each of grad_in's phases (q, p), phase k = q * sw + p: taps[start[k] .. start[k+1])
 * (indices i*kw + j) at offsets off[...] from lane 0 in the scatter buffer. */
static inline void convx_dw_scatter_offsets(const convx_dw_geometry *g, const convx_dw_layout *L, ptrdiff_t *off,
                                            ptrdiff_t *taps, ptrdiff_t *start) {
    const ptrdiff_t sh = g->stride_h, sw = g->stride_w;
    ptrdiff_t n = 0;
    for (ptrdiff_t q = 0; q < sh; q++) {
        for (ptrdiff_t p = 0; p < sw; p++) {
            start[q * sw + p] = n;
            for (ptrdiff_t i = 0; i < g->kernel_h; i++) {
                if (i * g->dilation_h % sh != q) continue;
                for (ptrdiff_t j = 0; j < g->kernel_w; j++) {
                    if (j * g->dilation_w % sw != p) continue;
                    taps[n] = i * g->kernel_w + j;
                    off[n] = L->head + (L->head_rows - i * g->dilation_h / sh) * L->cols - j * g->dilation_w / sw;
                    n++;
                }
            }
        }
    }
    start[sh * sw] = n;
}

#define DT float
#define DS f
#include "_depthwise_body.h"
#undef DT
#undef DS

#define DT double
#define DS d
#include "_depthwise_body.h"
#undef DT
#undef DS

#endif
