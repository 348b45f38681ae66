/* The NHWC pooling kernels for one element type NT (suffix NS) whose lowest value is NT_LOWEST,
 * included by _pool_nhwc.h: every kernel for float and double, the max forward alone (with
 * CONVX_NHWC_MAX_ONLY) for int8_t and uint8_t. */

/* Channels a window keeps in registers at once: two AVX-512 vectors, four AVX2 ones. */
#define CONVX_NHWC_BLOCK (128 / (ptrdiff_t)sizeof(NT))

/* best[c], pos[c] for the channels [c0, c1) over the taps of one window, row-major: strict > from
 * NT_LOWEST (-inf, or the integer type's minimum), so the first maximum wins, and NaN wins (the
 * last NaN), as _max_window in _pool.pxi; a window that ends at NT_LOWEST reports its first tap
 * inside the input. For the integers this is the NCHW kernels' start from the window's first tap:
 * that tap either exceeds the minimum and wins, or equals it and nothing later can win over it. ``track`` (a literal): whether
 * pos is kept. ``block`` (a literal, or 0): c1 - c0, to keep the running maxima in registers. */
static inline __attribute__((always_inline)) void CONVX_NHWC(convx_nhwc_max_channels)(
    const NT *CONVX_RESTRICT image, NT *CONVX_RESTRICT best, int64_t *CONVX_RESTRICT pos, ptrdiff_t width,
    ptrdiff_t channels, ptrdiff_t plane, ptrdiff_t d0, ptrdiff_t depths, ptrdiff_t dd, ptrdiff_t h0, ptrdiff_t rows,
    ptrdiff_t dh, ptrdiff_t w0, ptrdiff_t cols, ptrdiff_t dw, int track, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t block) {
    const ptrdiff_t n = block ? block : c1 - c0;
    NT b[CONVX_NHWC_BLOCK];
    int64_t at[CONVX_NHWC_BLOCK];
    NT *CONVX_RESTRICT run = block ? b : best + c0;
    int64_t *CONVX_RESTRICT where = block ? at : pos + c0;
    ptrdiff_t c;
    const int64_t first = (int64_t)d0 * plane + (int64_t)h0 * width + w0;
    CONVX_SIMD for (c = 0; c < n; c++) run[c] = NT_LOWEST;
    if (track) CONVX_SIMD for (c = 0; c < n; c++) where[c] = first;
    for (ptrdiff_t a = 0; a < depths; a++) {
        for (ptrdiff_t i = 0; i < rows; i++) {
            for (ptrdiff_t j = 0; j < cols; j++) {
                const int64_t p = (int64_t)(d0 + a * dd) * plane + (int64_t)(h0 + i * dh) * width + w0 + j * dw;
                const NT *CONVX_RESTRICT src = image + p * channels + c0;
                if (track) {
                    CONVX_SIMD for (c = 0; c < n; c++) {
                        const NT v = src[c];
                        const int take = (v > run[c]) | (v != v);
                        run[c] = take ? v : run[c];
                        where[c] = take ? p : where[c];
                    }
                } else {
                    CONVX_SIMD for (c = 0; c < n; c++) {
                        const NT v = src[c];
                        run[c] = ((v > run[c]) | (v != v)) ? v : run[c];
                    }
                }
            }
        }
    }
    if (block) {
        CONVX_SIMD for (c = 0; c < n; c++) best[c0 + c] = b[c];
        if (track) CONVX_SIMD for (c = 0; c < n; c++) pos[c0 + c] = at[c];
    }
}

/* A window of a 2-D pooling (depths 1: d0, dd and plane unused) or of a 3-D one, whose taps are the
 * depths d0 + a * dd, a < depths, of planes of ``plane`` pixels. */
static inline __attribute__((always_inline)) void CONVX_NHWC(convx_nhwc_max_window)(
    const NT *CONVX_RESTRICT image, NT *CONVX_RESTRICT best, int64_t *CONVX_RESTRICT pos, ptrdiff_t width,
    ptrdiff_t channels, ptrdiff_t plane, ptrdiff_t d0, ptrdiff_t depths, ptrdiff_t dd, ptrdiff_t h0, ptrdiff_t rows,
    ptrdiff_t dh, ptrdiff_t w0, ptrdiff_t cols, ptrdiff_t dw, int track) {
    ptrdiff_t c0 = 0;
    for (; c0 + CONVX_NHWC_BLOCK <= channels; c0 += CONVX_NHWC_BLOCK)
        CONVX_NHWC(convx_nhwc_max_channels)(image, best, pos, width, channels, plane, d0, depths, dd, h0, rows, dh, w0,
                                            cols, dw, track, c0, c0 + CONVX_NHWC_BLOCK, CONVX_NHWC_BLOCK);
    if (c0 < channels)
        CONVX_NHWC(convx_nhwc_max_channels)(image, best, pos, width, channels, plane, d0, depths, dd, h0, rows, dh, w0,
                                            cols, dw, track, c0, channels, 0);
}

/* One output row of max pooling of one (H, W, C) image: out[ow, c] = the maximum over window ow,
 * where[ow, c] = its flat h * W + w (where may be NULL). The row's windows take the input rows
 * h0 + i * dh, i < rows, window ow the columns col_first[ow] + j * dw, j < col_count[ow]. */
CONVX_CLONES static void CONVX_NHWC(convx_nhwc_max_row)(
    const NT *CONVX_RESTRICT image, NT *CONVX_RESTRICT out, int64_t *CONVX_RESTRICT where, ptrdiff_t width,
    ptrdiff_t channels, ptrdiff_t out_w, ptrdiff_t h0, ptrdiff_t rows, ptrdiff_t dh,
    const int64_t *CONVX_RESTRICT col_first, const int64_t *CONVX_RESTRICT col_count, ptrdiff_t dw) {
    for (ptrdiff_t ow = 0; ow < out_w; ow++) {
        NT *best = out + ow * channels;
        int64_t *pos = where != NULL ? where + ow * channels : NULL;
        const ptrdiff_t w0 = col_first[ow], cols = col_count[ow];
        /* Literal windows of the common sizes, so that the taps unroll. */
#define CONVX_NHWC_MAX(ROWS, DH, COLS, DW)                                                                    \
    do {                                                                                                    \
        if (pos != NULL)                                                                                    \
            CONVX_NHWC(convx_nhwc_max_window)(image, best, pos, width, channels, 0, 0, 1, 0, h0, ROWS, DH, w0, COLS, \
                                              DW, 1);                                                         \
        else                                                                                                \
            CONVX_NHWC(convx_nhwc_max_window)(image, best, NULL, width, channels, 0, 0, 1, 0, h0, ROWS, DH, w0, COLS,\
                                              DW, 0);                                                         \
    } while (0)
        if (rows == 2 && cols == 2 && dh == 1 && dw == 1)
            CONVX_NHWC_MAX(2, 1, 2, 1);
        else if (rows == 3 && cols == 3 && dh == 1 && dw == 1)
            CONVX_NHWC_MAX(3, 1, 3, 1);
        else
            CONVX_NHWC_MAX(rows, dh, cols, dw);
#undef CONVX_NHWC_MAX
    }
}

#ifndef CONVX_NHWC_MAX_ONLY
/* out[c] = (0 + the taps of one window for the channels [c0, c1), depth by depth, each row-major) / a, or
 * with ``divisions`` 2 / a / b, with 3 / a / b / e (2-D windows: depths 1, as convx_nhwc_max_window);
 * ``block`` as above (the sums then stay in registers until divided). */
static inline __attribute__((always_inline)) void CONVX_NHWC(convx_nhwc_mean_channels)(
    const NT *CONVX_RESTRICT image, NT *CONVX_RESTRICT out, ptrdiff_t width, ptrdiff_t channels, ptrdiff_t plane,
    ptrdiff_t d0, ptrdiff_t depths, ptrdiff_t dd, ptrdiff_t h0, ptrdiff_t rows, ptrdiff_t dh, ptrdiff_t w0,
    ptrdiff_t cols, ptrdiff_t dw, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t block, NT a, NT b, NT e, int divisions) {
    const ptrdiff_t n = block ? block : c1 - c0;
    NT sums[CONVX_NHWC_BLOCK];
    NT *CONVX_RESTRICT acc = block ? sums : out + c0;
    ptrdiff_t c;
    CONVX_SIMD for (c = 0; c < n; c++) acc[c] = 0;
    for (ptrdiff_t k = 0; k < depths; k++) {
        for (ptrdiff_t i = 0; i < rows; i++) {
            for (ptrdiff_t j = 0; j < cols; j++) {
                const NT *CONVX_RESTRICT src =
                    image + ((d0 + k * dd) * plane + (h0 + i * dh) * width + w0 + j * dw) * channels + c0;
                CONVX_SIMD for (c = 0; c < n; c++) acc[c] = acc[c] + src[c];
            }
        }
    }
    if (block) {
        NT *CONVX_RESTRICT dst = out + c0;
        if (divisions == 3) CONVX_SIMD for (c = 0; c < n; c++) dst[c] = sums[c] / a / b / e;
        else if (divisions == 2) CONVX_SIMD for (c = 0; c < n; c++) dst[c] = sums[c] / a / b;
        else CONVX_SIMD for (c = 0; c < n; c++) dst[c] = sums[c] / a;
    } else if (divisions == 3) {
        CONVX_SIMD for (c = 0; c < n; c++) acc[c] = acc[c] / a / b / e;
    } else if (divisions == 2) {
        CONVX_SIMD for (c = 0; c < n; c++) acc[c] = acc[c] / a / b;
    } else {
        CONVX_SIMD for (c = 0; c < n; c++) acc[c] = acc[c] / a;
    }
}

static inline __attribute__((always_inline)) void CONVX_NHWC(convx_nhwc_mean_window)(
    const NT *CONVX_RESTRICT image, NT *CONVX_RESTRICT mean, ptrdiff_t width, ptrdiff_t channels, ptrdiff_t plane,
    ptrdiff_t d0, ptrdiff_t depths, ptrdiff_t dd, ptrdiff_t h0, ptrdiff_t rows, ptrdiff_t dh, ptrdiff_t w0,
    ptrdiff_t cols, ptrdiff_t dw, NT a, NT b, NT e, int divisions) {
    ptrdiff_t c0 = 0;
    for (; c0 + CONVX_NHWC_BLOCK <= channels; c0 += CONVX_NHWC_BLOCK)
        CONVX_NHWC(convx_nhwc_mean_channels)(image, mean, width, channels, plane, d0, depths, dd, h0, rows, dh, w0,
                                             cols, dw, c0, c0 + CONVX_NHWC_BLOCK, CONVX_NHWC_BLOCK, a, b, e, divisions);
    if (c0 < channels)
        CONVX_NHWC(convx_nhwc_mean_channels)(image, mean, width, channels, plane, d0, depths, dd, h0, rows, dh, w0,
                                             cols, dw, c0, channels, 0, a, b, e, divisions);
}

/* One output row of average pooling of one (H, W, C) image, windows as in convx_nhwc_max_row:
 * out[ow, c] = (0 + the window's taps in row-major order) / (row_div * col_div[ow]), or with
 * ``two_step`` (adaptive pooling, PyTorch's order) / row_div / col_div[ow]. */
CONVX_CLONES static void CONVX_NHWC(convx_nhwc_avg_row)(
    const NT *CONVX_RESTRICT image, NT *CONVX_RESTRICT out, ptrdiff_t width, ptrdiff_t channels, ptrdiff_t out_w,
    ptrdiff_t h0, ptrdiff_t rows, ptrdiff_t dh, const int64_t *CONVX_RESTRICT col_first,
    const int64_t *CONVX_RESTRICT col_count, ptrdiff_t dw, int64_t row_div, const int64_t *CONVX_RESTRICT col_div,
    int two_step) {
    for (ptrdiff_t ow = 0; ow < out_w; ow++) {
        NT *CONVX_RESTRICT mean = out + ow * channels;
        const ptrdiff_t w0 = col_first[ow], cols = col_count[ow];
        /* The divisions of the NCHW kernels: by the product of the two axes' counts, or by each. */
        const NT a = two_step ? (NT)row_div : (NT)(row_div * col_div[ow]), b = (NT)col_div[ow];
        const int divisions = two_step ? 2 : 1;
        /* Literal windows of the common sizes, so that the taps unroll. */
        if (rows == 2 && cols == 2 && dh == 1 && dw == 1)
            CONVX_NHWC(convx_nhwc_mean_window)(image, mean, width, channels, 0, 0, 1, 0, h0, 2, 1, w0, 2, 1, a, b, 1,
                                               divisions);
        else if (rows == 3 && cols == 3 && dh == 1 && dw == 1)
            CONVX_NHWC(convx_nhwc_mean_window)(image, mean, width, channels, 0, 0, 1, 0, h0, 3, 1, w0, 3, 1, a, b, 1,
                                               divisions);
        else
            CONVX_NHWC(convx_nhwc_mean_window)(image, mean, width, channels, 0, 0, 1, 0, h0, rows, dh, w0, cols, dw,
                                               a, b, 1, divisions);
    }
}

/* The shares of one output row of average pooling added to one input row (W, C) that its
 * windows hold: dst[col_first[ow] + j * dw, c] += grad[ow, c] / divisor(ow), ow in order
 * (the divisor as in convx_nhwc_avg_row). share: ``channels`` elements of scratch. */
CONVX_CLONES static void CONVX_NHWC(convx_nhwc_avg_spread_row)(
    const NT *CONVX_RESTRICT grad, NT *CONVX_RESTRICT dst, NT *CONVX_RESTRICT share, ptrdiff_t channels,
    ptrdiff_t out_w, const int64_t *CONVX_RESTRICT col_first, const int64_t *CONVX_RESTRICT col_count, ptrdiff_t dw,
    int64_t row_div, const int64_t *CONVX_RESTRICT col_div, int two_step) {
    ptrdiff_t c;
    for (ptrdiff_t ow = 0; ow < out_w; ow++) {
        const NT *CONVX_RESTRICT g = grad + ow * channels;
        if (two_step) {
            const NT a = (NT)row_div, b = (NT)col_div[ow];
            CONVX_SIMD for (c = 0; c < channels; c++) share[c] = g[c] / a / b;
        } else {
            const NT d = (NT)(row_div * col_div[ow]);
            CONVX_SIMD for (c = 0; c < channels; c++) share[c] = g[c] / d;
        }
        for (ptrdiff_t j = 0; j < col_count[ow]; j++) {
            NT *CONVX_RESTRICT to = dst + (col_first[ow] + j * dw) * channels;
            CONVX_SIMD for (c = 0; c < channels; c++) to[c] += share[c];
        }
    }
}

/* grad_in (plane x channels, overwritten) = 0, then grad_in[indices[o, c], c] += grad[o, c] over the
 * outputs o in order. 1 (grad_in partly written) at the first chunk of channels holding an index
 * outside [0, plane): each index is read once, into a checked offset, before it is used as an
 * address. The additions are scalar on purpose: overlapping windows often share their maximum, so
 * consecutive outputs add to one element, which a vector scatter then gather of it cannot forward
 * (1.3x slower on 64x64x56x56 float32, 3x3 stride 2); the offsets and their check are vectors,
 * CONVX_NHWC_CHUNK channels at a time (a bound for the stack, not a tuned size: 64 int64 offsets).
 * On an Intel Xeon (lscpu "Intel(R) Xeon(R) Processor", AVX-512 clone, 1 thread, 64x64x32x32
 * float32, 3x3 stride 2) the all-scalar loop spent 0.61 s in the kernel per 300 calls (perf), 12
 * instructions per element, 1.2x the NCHW time; this one 0.43 s, 0.91-1.05x (interleaved medians,
 * machine load 4-6 on 2 cores: noisy). The zeros go in row by row as the
 * indices first reach each input row (every row before the highest reached is zeroed), not in one
 * fill of the image ahead, so that the rows added into are still in cache.
 * Chunks of fewer than CONVX_NHWC_VECTOR_LEAST channels take their offsets in a scalar loop: the
 * vector loop's reduction went through the stack at every output, which made 1x128x128x4 float32,
 * 127x127 windows (16384 outputs on 4-7 maxima per channel) 262 us against 127 scalar (same Xeon,
 * 1 thread, medians of 50). 2x56x56xC 3x3 stride 2 / 2x64x64xC 31x31 stride 2, us, vector
 * against scalar: C = 16: 41 / 57 against 46 / 65; C = 24: 83 / 117 against 61 / 88 (the masked
 * tail); C = 32: 108 / 118 against 81 / 125 (noisy, one build each). */
#define CONVX_NHWC_CHUNK 64
#define CONVX_NHWC_VECTOR_LEAST 16
CONVX_CLONES static int CONVX_NHWC(convx_nhwc_max_scatter)(const NT *CONVX_RESTRICT grad,
                                                           const int64_t *CONVX_RESTRICT indices,
                                                           NT *CONVX_RESTRICT grad_in, ptrdiff_t plane,
                                                           ptrdiff_t width, ptrdiff_t outputs, ptrdiff_t channels) {
    const ptrdiff_t row = width * channels;
    /* Input rows [0, zeroed) hold zeros or sums; limit = zeroed * width, the first index beyond them. */
    ptrdiff_t zeroed = 0;
    uint64_t limit = 0;
    int64_t offset[CONVX_NHWC_CHUNK];
    for (ptrdiff_t o = 0; o < outputs; o++) {
        const NT *CONVX_RESTRICT g = grad + o * channels;
        const int64_t *CONVX_RESTRICT at = indices + o * channels;
        for (ptrdiff_t c0 = 0; c0 < channels; c0 += CONVX_NHWC_CHUNK) {
            const ptrdiff_t n = channels - c0 < CONVX_NHWC_CHUNK ? channels - c0 : CONVX_NHWC_CHUNK;
            uint64_t top = 0;
            if (n < CONVX_NHWC_VECTOR_LEAST) {
                for (ptrdiff_t i = 0; i < n; i++) {
                    const int64_t k = at[c0 + i];
                    top = (uint64_t)k > top ? (uint64_t)k : top;
                    offset[i] = (int64_t)((uint64_t)k * (uint64_t)channels + (uint64_t)(c0 + i));
                }
            } else {
                CONVX_PRAGMA(omp simd reduction(max:top)) for (ptrdiff_t i = 0; i < n; i++) {
                    const int64_t k = at[c0 + i];
                    top = (uint64_t)k > top ? (uint64_t)k : top;
                    /* Unsigned: an index far outside wraps here (and is refused below) instead of overflowing. */
                    offset[i] = (int64_t)((uint64_t)k * (uint64_t)channels + (uint64_t)(c0 + i));
                }
            }
            if (top >= limit) {
                if (top >= (uint64_t)plane) return 1;
                const ptrdiff_t reach = (ptrdiff_t)(top / (uint64_t)width) + 1;
                memset(grad_in + zeroed * row, 0, (size_t)((reach - zeroed) * row) * sizeof(NT));
                zeroed = reach;
                limit = (uint64_t)(zeroed * width);
            }
            const NT *CONVX_RESTRICT gc = g + c0;
            for (ptrdiff_t i = 0; i < n; i++) grad_in[offset[i]] += gc[i];
        }
    }
    if (zeroed * width < plane) memset(grad_in + zeroed * row, 0, (size_t)(plane * channels - zeroed * row) * sizeof(NT));
    return 0;
}
#undef CONVX_NHWC_CHUNK
#undef CONVX_NHWC_VECTOR_LEAST

/* The max backward of one (H, W, C) image whose indices each lie in their output's own 2x2 block
 * (rows 2oh, 2oh + 1, columns 2ow, 2ow + 1: what a 2x2 stride-2 max pool records; the caller has
 * checked that 2 * out_h <= H and 2 * out_w <= W). No two outputs then share an input, and each
 * input element is written once: 0 + its block's gradient where it is the recorded maximum, else 0,
 * which is what the scatter onto zeros gives, bit for bit, in one pass instead of a zero fill and a
 * scalar scatter. Output row by output row, the indices are read once each into codes (2 * row in
 * the block + column in it), then the two input rows are written from the codes alone; 1, with
 * grad_in partly written, at the first row holding an index outside its block (the caller then
 * runs convx_nhwc_max_scatter on the image). code: out_w * channels int32 elements of scratch.
 * The two columns of a block are written by two loops, one C-vector after the other: with both in
 * one loop (two store streams 4*C bytes apart, gv read by masked loads) the kernel took 1.5x the
 * NCHW kernel's time on the Xeon above (64x64x32x32 float32, 1 thread, perf), this way 1.04x. */
CONVX_CLONES static int CONVX_NHWC(convx_nhwc_max_blocks)(const NT *CONVX_RESTRICT grad,
                                                          const int64_t *CONVX_RESTRICT indices,
                                                          NT *CONVX_RESTRICT grad_in, int32_t *CONVX_RESTRICT code,
                                                          ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,
                                                          ptrdiff_t out_w, ptrdiff_t channels) {
    const ptrdiff_t row = out_w * channels, tail = (width - 2 * out_w) * channels;
    ptrdiff_t c;
    for (ptrdiff_t oh = 0; oh < out_h; oh++) {
        const int64_t *CONVX_RESTRICT at = indices + oh * row;
        const NT *CONVX_RESTRICT g = grad + oh * row;
        uint64_t stray = 0;
        for (ptrdiff_t ow = 0; ow < out_w; ow++) {
            const int64_t corner = (int64_t)(2 * oh) * width + 2 * ow;
            const int64_t *CONVX_RESTRICT a = at + ow * channels;
            int32_t *CONVX_RESTRICT to = code + ow * channels;
            /* Unsigned arithmetic: any int64 index, however far off, wraps instead of overflowing. */
            CONVX_SIMD_OR(stray) for (c = 0; c < channels; c++) {
                const uint64_t k = (uint64_t)a[c] - (uint64_t)corner;
                /* In its block: k is 0, 1, width or width + 1: within [0, width + 1], not in [2, width). */
                stray |= (uint64_t)((k > (uint64_t)(width + 1)) | ((k - 2) < (uint64_t)(width - 2)));
                const uint64_t below = k >= (uint64_t)width;
                to[c] = (int32_t)(2 * below + k - below * (uint64_t)width);
            }
        }
        if (stray) return 1;
        for (ptrdiff_t r = 0; r < 2; r++) {
            NT *CONVX_RESTRICT dst = grad_in + (2 * oh + r) * width * channels;
            const int32_t left = (int32_t)(2 * r), right = left + 1;
            for (ptrdiff_t ow = 0; ow < out_w; ow++) {
                const NT *CONVX_RESTRICT gv = g + ow * channels;
                const int32_t *CONVX_RESTRICT k = code + ow * channels;
                NT *CONVX_RESTRICT d0 = dst + 2 * ow * channels;
                NT *CONVX_RESTRICT d1 = d0 + channels;
                /* One column after the other, so that the stores run in one stream along the row. */
                CONVX_SIMD for (c = 0; c < channels; c++) {
                    const NT v = gv[c];
                    d0[c] = (NT)0 + (k[c] == left ? v : (NT)0);
                }
                CONVX_SIMD for (c = 0; c < channels; c++) {
                    const NT v = gv[c];
                    d1[c] = (NT)0 + (k[c] == right ? v : (NT)0);
                }
            }
            if (tail) memset(dst + 2 * out_w * channels, 0, (size_t)tail * sizeof(NT));
        }
    }
    if (2 * out_h < height)
        memset(grad_in + 2 * out_h * width * channels, 0, (size_t)((height - 2 * out_h) * width * channels) * sizeof(NT));
    return 0;
}

/* One output row (od, oh) of 3-D max pooling of one (D, H, W, C) volume: as convx_nhwc_max_row,
 * the row's windows taking also the depths d0 + a * dd, a < depths; where[ow, c] = the flat
 * d * H * W + h * W + w of each maximum, in the window order (depth, rows, columns) of the NCDHW
 * kernels (_pool3d.pxi). */
CONVX_CLONES static void CONVX_NHWC(convx_ndhwc_max_row)(
    const NT *CONVX_RESTRICT volume, NT *CONVX_RESTRICT out, int64_t *CONVX_RESTRICT where, ptrdiff_t height,
    ptrdiff_t width, ptrdiff_t channels, ptrdiff_t out_w, ptrdiff_t d0, ptrdiff_t depths, ptrdiff_t dd, ptrdiff_t h0,
    ptrdiff_t rows, ptrdiff_t dh, const int64_t *CONVX_RESTRICT col_first, const int64_t *CONVX_RESTRICT col_count,
    ptrdiff_t dw) {
    const ptrdiff_t plane = height * width;
    for (ptrdiff_t ow = 0; ow < out_w; ow++) {
        NT *best = out + ow * channels;
        int64_t *pos = where != NULL ? where + ow * channels : NULL;
        const ptrdiff_t w0 = col_first[ow], cols = col_count[ow];
#define CONVX_NDHWC_MAX(DEPTHS, DD, ROWS, DH, COLS, DW)                                                        \
    do {                                                                                                    \
        if (pos != NULL)                                                                                    \
            CONVX_NHWC(convx_nhwc_max_window)(volume, best, pos, width, channels, plane, d0, DEPTHS, DD, h0, ROWS,  \
                                              DH, w0, COLS, DW, 1);                                           \
        else                                                                                                \
            CONVX_NHWC(convx_nhwc_max_window)(volume, best, NULL, width, channels, plane, d0, DEPTHS, DD, h0, ROWS, \
                                              DH, w0, COLS, DW, 0);                                           \
    } while (0)
        if (depths == 2 && rows == 2 && cols == 2 && dd == 1 && dh == 1 && dw == 1)
            CONVX_NDHWC_MAX(2, 1, 2, 1, 2, 1);
        else if (depths == 3 && rows == 3 && cols == 3 && dd == 1 && dh == 1 && dw == 1)
            CONVX_NDHWC_MAX(3, 1, 3, 1, 3, 1);
        else
            CONVX_NDHWC_MAX(depths, dd, rows, dh, cols, dw);
#undef CONVX_NDHWC_MAX
    }
}

/* One output row (od, oh) of 3-D average pooling of one (D, H, W, C) volume, windows as in
 * convx_ndhwc_max_row: out[ow, c] = (0 + the window's taps, depth by depth, row-major) /
 * (depth_div * row_div * col_div[ow]) as one division, or with ``adaptive`` (PyTorch's order for
 * adaptive pooling) / depth_div / row_div / col_div[ow]: the NCDHW kernels' divisions. */
CONVX_CLONES static void CONVX_NHWC(convx_ndhwc_avg_row)(
    const NT *CONVX_RESTRICT volume, NT *CONVX_RESTRICT out, ptrdiff_t height, ptrdiff_t width, ptrdiff_t channels,
    ptrdiff_t out_w, ptrdiff_t d0, ptrdiff_t depths, ptrdiff_t dd, ptrdiff_t h0, ptrdiff_t rows, ptrdiff_t dh,
    const int64_t *CONVX_RESTRICT col_first, const int64_t *CONVX_RESTRICT col_count, ptrdiff_t dw,
    int64_t depth_div, int64_t row_div, const int64_t *CONVX_RESTRICT col_div, int adaptive) {
    const ptrdiff_t plane = height * width;
    for (ptrdiff_t ow = 0; ow < out_w; ow++) {
        NT *CONVX_RESTRICT mean = out + ow * channels;
        const ptrdiff_t w0 = col_first[ow], cols = col_count[ow];
        const NT a = adaptive ? (NT)depth_div : (NT)(depth_div * row_div * col_div[ow]);
        const NT b = (NT)row_div, e = (NT)col_div[ow];
        const int divisions = adaptive ? 3 : 1;
        if (depths == 2 && rows == 2 && cols == 2 && dd == 1 && dh == 1 && dw == 1)
            CONVX_NHWC(convx_nhwc_mean_window)(volume, mean, width, channels, plane, d0, 2, 1, h0, 2, 1, w0, 2, 1, a,
                                               b, e, divisions);
        else if (depths == 3 && rows == 3 && cols == 3 && dd == 1 && dh == 1 && dw == 1)
            CONVX_NHWC(convx_nhwc_mean_window)(volume, mean, width, channels, plane, d0, 3, 1, h0, 3, 1, w0, 3, 1, a,
                                               b, e, divisions);
        else
            CONVX_NHWC(convx_nhwc_mean_window)(volume, mean, width, channels, plane, d0, depths, dd, h0, rows, dh, w0,
                                               cols, dw, a, b, e, divisions);
    }
}

/* The shares of one output row (od, oh) of 3-D average pooling added to one input row (W, C) that
 * its windows hold: dst[col_first[ow] + j * dw, c] += grad[ow, c] / divisor(ow), the divisions of
 * convx_ndhwc_avg_row. The windows go from the last to the first, the order in which the NCDHW
 * kernel's column taps reach an input element, or with ``adaptive`` from the first (that kernel's
 * window order), so that every element takes its shares in the NCDHW order. share: ``channels``
 * elements of scratch. */
CONVX_CLONES static void CONVX_NHWC(convx_ndhwc_avg_spread_row)(
    const NT *CONVX_RESTRICT grad, NT *CONVX_RESTRICT dst, NT *CONVX_RESTRICT share, ptrdiff_t channels,
    ptrdiff_t out_w, const int64_t *CONVX_RESTRICT col_first, const int64_t *CONVX_RESTRICT col_count, ptrdiff_t dw,
    int64_t depth_div, int64_t row_div, const int64_t *CONVX_RESTRICT col_div, int adaptive) {
    ptrdiff_t c;
    for (ptrdiff_t k = 0; k < out_w; k++) {
        const ptrdiff_t ow = adaptive ? k : out_w - 1 - k;
        const NT *CONVX_RESTRICT g = grad + ow * channels;
        if (adaptive) {
            const NT a = (NT)depth_div, b = (NT)row_div, e = (NT)col_div[ow];
            CONVX_SIMD for (c = 0; c < channels; c++) share[c] = g[c] / a / b / e;
        } else {
            const NT d = (NT)(depth_div * row_div * col_div[ow]);
            CONVX_SIMD for (c = 0; c < channels; c++) share[c] = g[c] / d;
        }
        for (ptrdiff_t j = 0; j < col_count[ow]; j++) {
            NT *CONVX_RESTRICT to = dst + (col_first[ow] + j * dw) * channels;
            CONVX_SIMD for (c = 0; c < channels; c++) to[c] += share[c];
        }
    }
}

/* The separable max pool of convx_max_pool_separable (_pool_body.h) channels last, for windows of
 * dilation 1: van Herk / Gil-Werman blocks along each axis, every step a unit-stride loop over a
 * position's n lanes (a row's C channels in the row pass, its out_w * C output columns and channels
 * in the column pass), with the same comparisons in the same order as the channels-first kernel,
 * so the same winners: NaN wins (the last NaN), else the first maximum in row-major window order.
 * win: convx_max_row_blocks's (first tap, last tap, kind) per output along the axis. */

/* The winners of each block's prefixes (ascending) and suffixes (descending) along an axis of
 * `count` positions, position p's n lanes at values + p * step: pre_* / suf_*[p * n + lane], the
 * value and the position it came from. Blocks of `kernel` positions from 0; a suffix also restarts
 * at the last position. */
static inline __attribute__((always_inline)) void CONVX_NHWC(convx_nhwc_sep_blocks)(
    const NT *CONVX_RESTRICT values, ptrdiff_t step, ptrdiff_t count, ptrdiff_t n, ptrdiff_t kernel,
    NT *CONVX_RESTRICT pre_val, int32_t *CONVX_RESTRICT pre_pos, NT *CONVX_RESTRICT suf_val,
    int32_t *CONVX_RESTRICT suf_pos) {
    ptrdiff_t c, phase = 0;
    for (ptrdiff_t p = 0; p < count; p++) {
        const NT *CONVX_RESTRICT v = values + p * step;
        NT *CONVX_RESTRICT pv = pre_val + p * n;
        int32_t *CONVX_RESTRICT pp = pre_pos + p * n;
        if (phase == 0) {
            CONVX_SIMD for (c = 0; c < n; c++) {
                pv[c] = v[c];
                pp[c] = (int32_t)p;
            }
        } else {
            const NT *CONVX_RESTRICT up = pv - n;
            const int32_t *CONVX_RESTRICT up_pos = pp - n;
            CONVX_SIMD for (c = 0; c < n; c++) {
                const int take = (v[c] > up[c]) | (v[c] != v[c]);
                pv[c] = take ? v[c] : up[c];
                pp[c] = take ? (int32_t)p : up_pos[c];
            }
        }
        phase = phase == kernel - 1 ? 0 : phase + 1;
    }
    phase = (count - 1) % kernel;
    for (ptrdiff_t p = count - 1; p >= 0; p--) {
        const NT *CONVX_RESTRICT v = values + p * step;
        NT *CONVX_RESTRICT sv = suf_val + p * n;
        int32_t *CONVX_RESTRICT sp = suf_pos + p * n;
        if (p == count - 1 || phase == kernel - 1) {
            CONVX_SIMD for (c = 0; c < n; c++) {
                sv[c] = v[c];
                sp[c] = (int32_t)p;
            }
        } else {
            const NT *CONVX_RESTRICT down = sv + n;
            const int32_t *CONVX_RESTRICT down_pos = sp + n;
            CONVX_SIMD for (c = 0; c < n; c++) {
                const int keep = (down[c] > v[c]) | (down[c] != down[c]);
                sv[c] = keep ? down[c] : v[c];
                sp[c] = keep ? down_pos[c] : (int32_t)p;
            }
        }
        phase = phase == 0 ? kernel - 1 : phase - 1;
    }
}

/* Row pass of input row h of one (H, W, C) image: rval / rcol[h, ow, c] = the winner of row h's
 * taps of window column ow (value, column). scratch: 2 * width * C values, then as many int32. */
CONVX_CLONES static void CONVX_NHWC(convx_nhwc_max_sep_row)(
    const NT *CONVX_RESTRICT image, ptrdiff_t width, ptrdiff_t channels, ptrdiff_t h, ptrdiff_t kernel_w,
    ptrdiff_t out_w, const int64_t *CONVX_RESTRICT win, NT *CONVX_RESTRICT scratch, NT *CONVX_RESTRICT rval,
    int32_t *CONVX_RESTRICT rcol) {
    const ptrdiff_t C = channels, m = width * C;
    NT *pre_val = scratch, *suf_val = scratch + m;
    int32_t *pre_pos = (int32_t *)(void *)(suf_val + m), *suf_pos = pre_pos + m;
    const int64_t *CONVX_RESTRICT first = win, *CONVX_RESTRICT last = win + out_w, *CONVX_RESTRICT kind = win + 2 * out_w;
    CONVX_NHWC(convx_nhwc_sep_blocks)(image + h * m, C, width, C, kernel_w, pre_val, pre_pos, suf_val, suf_pos);
    NT *CONVX_RESTRICT rv_row = rval + h * out_w * C;
    int32_t *CONVX_RESTRICT rc_row = rcol + h * out_w * C;
    for (ptrdiff_t o = 0; o < out_w; o++) {
        const NT *CONVX_RESTRICT pv = pre_val + last[o] * C, *CONVX_RESTRICT sv = suf_val + first[o] * C;
        const int32_t *CONVX_RESTRICT pp = pre_pos + last[o] * C, *CONVX_RESTRICT sp = suf_pos + first[o] * C;
        NT *CONVX_RESTRICT dst = rv_row + o * C;
        int32_t *CONVX_RESTRICT at = rc_row + o * C;
        const int64_t k = kind[o];
        CONVX_SIMD for (ptrdiff_t c = 0; c < C; c++) {
            const int later = (k == 0) | ((k == 2) & ((pv[c] > sv[c]) | (pv[c] != pv[c])));
            dst[c] = later ? pv[c] : sv[c];
            at[c] = later ? pp[c] : sp[c];
        }
    }
}

/* Column pass for the lanes [l0, l0 + n) of rval / rcol (H rows of L = out_w * C lanes): out /
 * indices[oh, lane] (rows of L) = the winner of window row oh's row winners, indices its flat
 * h * W + w (indices may be NULL). scratch: 2 * height * n values, then as many int32. */
CONVX_CLONES static void CONVX_NHWC(convx_nhwc_max_sep_columns)(
    const NT *CONVX_RESTRICT rval, const int32_t *CONVX_RESTRICT rcol, ptrdiff_t height, ptrdiff_t width,
    ptrdiff_t lanes, ptrdiff_t l0, ptrdiff_t n, ptrdiff_t kernel_h, ptrdiff_t out_h,
    const int64_t *CONVX_RESTRICT win, NT *CONVX_RESTRICT scratch, NT *CONVX_RESTRICT out,
    int64_t *CONVX_RESTRICT indices) {
    const ptrdiff_t m = height * n;
    NT *pre_val = scratch, *suf_val = scratch + m;
    int32_t *pre_row = (int32_t *)(void *)(suf_val + m), *suf_row = pre_row + m;
    ptrdiff_t c;
    CONVX_NHWC(convx_nhwc_sep_blocks)(rval + l0, lanes, height, n, kernel_h, pre_val, pre_row, suf_val, suf_row);
    const int64_t *CONVX_RESTRICT first = win, *CONVX_RESTRICT last = win + out_h, *CONVX_RESTRICT kind = win + 2 * out_h;
    for (ptrdiff_t o = 0; o < out_h; o++) {
        const NT *CONVX_RESTRICT pv = pre_val + last[o] * n, *CONVX_RESTRICT sv = suf_val + first[o] * n;
        const int32_t *CONVX_RESTRICT pr = pre_row + last[o] * n, *CONVX_RESTRICT sr = suf_row + first[o] * n;
        NT *CONVX_RESTRICT dst = out + o * lanes + l0;
        const int64_t k = kind[o];
        CONVX_SIMD for (c = 0; c < n; c++) {
            const int later = (k == 0) | ((k == 2) & ((pv[c] > sv[c]) | (pv[c] != pv[c])));
            dst[c] = later ? pv[c] : sv[c];
        }
        if (indices == NULL) continue;
        int64_t *CONVX_RESTRICT where = indices + o * lanes + l0;
        for (c = 0; c < n; c++) {
            const int later = (k == 0) | ((k == 2) & ((pv[c] > sv[c]) | (pv[c] != pv[c])));
            const ptrdiff_t r = later ? pr[c] : sr[c];
            where[c] = (int64_t)r * width + rcol[r * lanes + l0 + c];
        }
    }
}

#endif /* CONVX_NHWC_MAX_ONLY */

#undef CONVX_NHWC_BLOCK
