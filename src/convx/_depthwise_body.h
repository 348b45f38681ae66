/* The depthwise kernels for one element type: included by _depthwise.h with DT the type (float,
 * double) and DS its suffix (f, d). */

#define CONVX_DW_JOIN2(a, b) a##_##b
#define CONVX_DW_JOIN(a, b) CONVX_DW_JOIN2(a, b)
#define CONVX_DW(name) CONVX_DW_JOIN(name, DS)

#if defined(__GNUC__)
#define CONVX_DW_INLINE static inline __attribute__((always_inline))
#else
#define CONVX_DW_INLINE static inline
#endif

/* lanes of a gather block, accumulators per tap of the weight gradient */
#define CONVX_DW_GB (CONVX_DW_GATHER_BYTES / (ptrdiff_t)sizeof(DT))
#define CONVX_DW_WB (CONVX_DW_WEIGHT_BYTES / (ptrdiff_t)sizeof(DT))

/* dst[p * dst_plane + r * dst_row + c] = src[p * src_plane + r * src_row + c] for p < planes, r < rows,
 * c < width. */
CONVX_DW_INLINE void CONVX_DW(convx_dw_copy_rows)(const DT *CONVX_RESTRICT src, ptrdiff_t src_plane, ptrdiff_t src_row,
                                                  DT *CONVX_RESTRICT dst, ptrdiff_t dst_plane, ptrdiff_t dst_row,
                                                  ptrdiff_t planes, ptrdiff_t rows, ptrdiff_t width) {
    for (ptrdiff_t p = 0; p < planes; p++) {
        for (ptrdiff_t r = 0; r < rows; r++) {
            const DT *CONVX_RESTRICT in = src + p * src_plane + r * src_row;
            DT *CONVX_RESTRICT out = dst + p * dst_plane + r * dst_row;
            CONVX_SIMD for (ptrdiff_t c = 0; c < width; c++) out[c] = in[c];
        }
    }
}

/* convx_dw_copy_rows with the narrow widths of small planes as literals: a row is then a few
 * vector moves instead of a scalar remainder loop. */
CONVX_DW_INLINE void CONVX_DW(convx_dw_copy)(const DT *src, ptrdiff_t src_plane, ptrdiff_t src_row, DT *dst,
                                             ptrdiff_t dst_plane, ptrdiff_t dst_row, ptrdiff_t planes, ptrdiff_t rows,
                                             ptrdiff_t width) {
#define CONVX_DW_COPY_CASE(W)                                                                       \
    case W:                                                                                         \
        CONVX_DW(convx_dw_copy_rows)(src, src_plane, src_row, dst, dst_plane, dst_row, planes, rows, W); \
        return;
    switch (width) {
        CONVX_DW_COPY_CASE(1)
        CONVX_DW_COPY_CASE(2)
        CONVX_DW_COPY_CASE(3)
        CONVX_DW_COPY_CASE(4)
        CONVX_DW_COPY_CASE(5)
        CONVX_DW_COPY_CASE(6)
        CONVX_DW_COPY_CASE(7)
        CONVX_DW_COPY_CASE(8)
        CONVX_DW_COPY_CASE(14)
        CONVX_DW_COPY_CASE(16)
        default:
            CONVX_DW(convx_dw_copy_rows)(src, src_plane, src_row, dst, dst_plane, dst_row, planes, rows, width);
    }
#undef CONVX_DW_COPY_CASE
}

/* even[p * dst_plane + r * dst_row + c] = src[p * src_plane + r * src_row + 2c], odd[...] = src[... + 2c + 1]:
 * the two column phases of `rows` rows of `width` (the last column of an odd width to even alone). */
CONVX_DW_INLINE void CONVX_DW(convx_dw_split_rows)(const DT *CONVX_RESTRICT src, ptrdiff_t src_plane,
                                                   ptrdiff_t src_row, DT *CONVX_RESTRICT even, DT *CONVX_RESTRICT odd,
                                                   ptrdiff_t dst_plane, ptrdiff_t dst_row, ptrdiff_t planes,
                                                   ptrdiff_t rows, ptrdiff_t width) {
    const ptrdiff_t pairs = width / 2;
    for (ptrdiff_t p = 0; p < planes; p++) {
        for (ptrdiff_t r = 0; r < rows; r++) {
            const DT *CONVX_RESTRICT in = src + p * src_plane + r * src_row;
            DT *CONVX_RESTRICT e = even + p * dst_plane + r * dst_row;
            DT *CONVX_RESTRICT o = odd + p * dst_plane + r * dst_row;
            CONVX_SIMD for (ptrdiff_t c = 0; c < pairs; c++) {
                e[c] = in[2 * c];
                o[c] = in[2 * c + 1];
            }
            if (width & 1) e[pairs] = in[width - 1];
        }
    }
}

CONVX_DW_INLINE void CONVX_DW(convx_dw_split)(const DT *src, ptrdiff_t src_plane, ptrdiff_t src_row, DT *even,
                                              DT *odd, ptrdiff_t dst_plane, ptrdiff_t dst_row, ptrdiff_t planes,
                                              ptrdiff_t rows, ptrdiff_t width) {
#define CONVX_DW_SPLIT_CASE(W)                                                                      \
    case W:                                                                                         \
        CONVX_DW(convx_dw_split_rows)(src, src_plane, src_row, even, odd, dst_plane, dst_row, planes, rows, W); \
        return;
    switch (width) {
        CONVX_DW_SPLIT_CASE(4)
        CONVX_DW_SPLIT_CASE(7)
        CONVX_DW_SPLIT_CASE(8)
        CONVX_DW_SPLIT_CASE(14)
        CONVX_DW_SPLIT_CASE(16)
        CONVX_DW_SPLIT_CASE(28)
        CONVX_DW_SPLIT_CASE(32)
        default:
            CONVX_DW(convx_dw_split_rows)(src, src_plane, src_row, even, odd, dst_plane, dst_row, planes, rows, width);
    }
#undef CONVX_DW_SPLIT_CASE
}

/* For `planes` planes (src_h x src_w, src_plane apart), buffer rows G0, G0 + rp, ... of each one's slot
 * (n of them, one row phase; the slots one slot apart) := source rows h0, h0 + rp, ..., split into
 * the column phases; zeros outside the source (left alone unless `zeros`: where they are zero
 * already). The rows' tails past the source's columns are left alone (zero since the buffer was
 * cleared). */
CONVX_DW_INLINE void CONVX_DW(convx_dw_fill_rows)(const DT *plane, ptrdiff_t src_plane, ptrdiff_t planes,
                                                  ptrdiff_t src_h, ptrdiff_t src_w, ptrdiff_t h0, ptrdiff_t G0,
                                                  ptrdiff_t n, const convx_dw_layout *L, DT *buf, int zeros) {
    const ptrdiff_t rp = L->row_phases, cp = L->col_phases, cols = L->cols, phase = L->phase;
    const ptrdiff_t slot = L->slot_rows / rp * cols;  /* a slot's elements in each phase plane */
    DT *dst = buf + (G0 % rp) * cp * phase + L->head + (G0 / rp) * cols;
    /* rows [lo, hi) lie in the source */
    ptrdiff_t lo = h0 >= 0 ? 0 : convx_dw_ceil(-h0, rp), hi = src_h > h0 ? convx_dw_ceil(src_h - h0, rp) : 0;
    lo = convx_dw_min(lo, n);
    hi = convx_dw_min(convx_dw_max(hi, lo), n);
    for (ptrdiff_t k = 0; k < n && zeros; k++) {
        if (k == lo) k = hi;
        if (k >= n) break;
        for (ptrdiff_t p = 0; p < planes; p++)
            for (ptrdiff_t c = 0; c < cp; c++) memset(dst + p * slot + c * phase + k * cols, 0, cols * sizeof(DT));
    }
    if (hi == lo) return;
    const DT *src = plane + (h0 + lo * rp) * src_w;
    dst += lo * cols;
    if (cp == 1) {
        CONVX_DW(convx_dw_copy)(src, src_plane, rp * src_w, dst, slot, cols, planes, hi - lo, src_w);
    } else if (cp == 2) {
        CONVX_DW(convx_dw_split)(src, src_plane, rp * src_w, dst, dst + phase, slot, cols, planes, hi - lo, src_w);
    } else {
        for (ptrdiff_t p = 0; p < planes; p++) {
            for (ptrdiff_t c = 0; c < cp && c < src_w; c++) {
                const ptrdiff_t m = (src_w - c + cp - 1) / cp;
                for (ptrdiff_t k = 0; k < hi - lo; k++) {
                    const DT *CONVX_RESTRICT in = src + p * src_plane + k * rp * src_w + c;
                    DT *CONVX_RESTRICT out = dst + p * slot + c * phase + k * cols;
                    for (ptrdiff_t e = 0; e < m; e++) out[e] = in[e * cp];
                }
            }
        }
    }
}

/* The buffer for `count` source planes (src_h x src_w, src_stride apart), band starting at
 * source row first_row (see convx_dw_layout). Without `banded` (one band per plane: every call
 * of the thread puts the zeros in the same places), the rows outside the source are left as the
 * cleared buffer has them. Returns whether (with check) every value copied is finite. */
CONVX_DW_INLINE int CONVX_DW(convx_dw_fill)(const DT *src, ptrdiff_t src_stride, ptrdiff_t count, ptrdiff_t src_h,
                                            ptrdiff_t src_w, ptrdiff_t first_row, const convx_dw_layout *L,
                                            DT *buf, int banded, int check) {
    const ptrdiff_t head = L->head_rows, slot = L->slot_rows, rp = L->row_phases;
    /* the rows above slot 0 (the scatter layout's, whose row_phases is 1), then each row phase of
     * every slot (head is 0 where rp is not 1) */
    CONVX_DW(convx_dw_fill_rows)(src, 0, 1, src_h, src_w, first_row - head, 0, head, L, buf, banded);
    for (ptrdiff_t q = 0; q < rp; q++)
        CONVX_DW(convx_dw_fill_rows)(src, src_stride, count, src_h, src_w, first_row + q, head + q, slot / rp, L, buf,
                                     banded);
    if (banded)
        for (ptrdiff_t q = 0; q < rp; q++)
            CONVX_DW(convx_dw_fill_rows)(src, 0, 1, 0, src_w, 0, head + count * slot + q, L->tail_rows, L, buf, 1);
    if (!check) return 1;
    /* x * 0 is 0 for finite x, NaN otherwise: summed in vector lanes over the rows copied (each
     * plane's a contiguous run, in cache), one horizontal sum at the end */
    const ptrdiff_t h0 = convx_dw_max(0, first_row), h1 = convx_dw_min(src_h, first_row + slot);
    DT bad = 0;
    for (ptrdiff_t p = 0; p < count && h1 > h0; p++) {
        const DT *CONVX_RESTRICT rows = src + p * src_stride + h0 * src_w;
        CONVX_SIMD_SUM(bad) for (ptrdiff_t k = 0; k < (h1 - h0) * src_w; k++) bad += rows[k] * (DT)0;
    }
    return bad == 0;
}

/* res[l] = (from_res ? res[l] : bias) + sum_{t < n} w[t] * at[off[t] + l] for one block of lanes, the taps
 * in registers (unrolled where n is a literal: GCC unrolls at most 16 iterations whole). */
CONVX_DW_INLINE void CONVX_DW(convx_dw_gather_block)(const DT *CONVX_RESTRICT at, const ptrdiff_t *off, ptrdiff_t n,
                                                     const DT *w, DT bias, DT *CONVX_RESTRICT res, int from_res) {
    if (from_res) {
        CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_DW_GB; l++) {
            DT acc = res[l];
            for (ptrdiff_t t = 0; t < n; t++) acc += w[t] * at[off[t] + l];
            res[l] = acc;
        }
    } else {
        CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_DW_GB; l++) {
            DT acc = bias;
            for (ptrdiff_t t = 0; t < n; t++) acc += w[t] * at[off[t] + l];
            res[l] = acc;
        }
    }
}

/* A block's taps [t0, t0 + n), n <= 16, with n as a literal. */
CONVX_DW_INLINE void CONVX_DW(convx_dw_gather_chunk)(const DT *at, const ptrdiff_t *off, ptrdiff_t n, const DT *w,
                                                     DT bias, DT *res, int from_res) {
#define CONVX_DW_CHUNK_CASE(N)                                                                      \
    case N:                                                                                         \
        CONVX_DW(convx_dw_gather_block)(at, off, N, w, bias, res, from_res);                        \
        return;
    switch (n) {
        CONVX_DW_CHUNK_CASE(1)
        CONVX_DW_CHUNK_CASE(2)
        CONVX_DW_CHUNK_CASE(3)
        CONVX_DW_CHUNK_CASE(4)
        CONVX_DW_CHUNK_CASE(5)
        CONVX_DW_CHUNK_CASE(6)
        CONVX_DW_CHUNK_CASE(7)
        CONVX_DW_CHUNK_CASE(8)
        CONVX_DW_CHUNK_CASE(9)
        CONVX_DW_CHUNK_CASE(10)
        CONVX_DW_CHUNK_CASE(11)
        CONVX_DW_CHUNK_CASE(12)
        CONVX_DW_CHUNK_CASE(13)
        CONVX_DW_CHUNK_CASE(14)
        CONVX_DW_CHUNK_CASE(15)
        default:
            CONVX_DW(convx_dw_gather_block)(at, off, 16, w, bias, res, from_res);
    }
#undef CONVX_DW_CHUNK_CASE
}

/* res[f] = (accumulate ? res[f] : bias) + sum_t w[t] * buf[off[t] + f] for the lanes f of [0, lanes)
 * rounded up to whole blocks, the taps in order, at most 16 at a time in registers. */
CONVX_DW_INLINE void CONVX_DW(convx_dw_gather_taps)(const DT *buf, const ptrdiff_t *off, ptrdiff_t taps, const DT *w,
                                                    DT bias, ptrdiff_t lanes, DT *res, int accumulate) {
    for (ptrdiff_t f0 = 0; f0 < lanes; f0 += CONVX_DW_GB)
        for (ptrdiff_t t0 = 0; t0 < taps; t0 += 16)
            CONVX_DW(convx_dw_gather_chunk)(buf + f0, off + t0, convx_dw_min(16, taps - t0), w + t0, bias, res + f0,
                                            accumulate || t0 > 0);
}

/* convx_dw_gather_taps with the tap counts of common kernels (and of their input gradients'
 * stride phases) as literals. */
CONVX_CLONES static void CONVX_DW(convx_dw_gather)(const DT *buf, const ptrdiff_t *off, ptrdiff_t taps, const DT *w,
                                                   DT bias, ptrdiff_t lanes, DT *res, int accumulate) {
#define CONVX_DW_GATHER_CASE(N)                                                                     \
    case N:                                                                                         \
        CONVX_DW(convx_dw_gather_taps)(buf, off, N, w, bias, lanes, res, accumulate);               \
        return;
    switch (taps) {
        CONVX_DW_GATHER_CASE(1)
        CONVX_DW_GATHER_CASE(2)
        CONVX_DW_GATHER_CASE(4)
        CONVX_DW_GATHER_CASE(6)
        CONVX_DW_GATHER_CASE(9)
        CONVX_DW_GATHER_CASE(12)
        CONVX_DW_GATHER_CASE(16)
        CONVX_DW_GATHER_CASE(25)
        CONVX_DW_GATHER_CASE(49)
        default:
            CONVX_DW(convx_dw_gather_taps)(buf, off, taps, w, bias, lanes, res, accumulate);
    }
#undef CONVX_DW_GATHER_CASE
}

/* out[p, m, oh, ow] = bias[m] + sum_{i, j} w[m, i, j] * x_padded[p, oh*sh + i*dh, ow*sw + j*dw] for the
 * `count` planes x + p * x_stride (of one input channel) and their `multiplier` filters w (taps
 * apart), out + p * out_stride + m * out_h * out_w; bias NULL for none. off: convx_dw_gather_offsets.
 * scratch: convx_dw_forward_scratch elements, cleared before the thread's first call. */
CONVX_CLONES static void CONVX_DW(convx_dw_forward_planes)(const DT *x, ptrdiff_t x_stride, ptrdiff_t count,
                                                           const DT *w, const DT *bias, ptrdiff_t multiplier,
                                                           DT *out, ptrdiff_t out_stride,
                                                           const convx_dw_geometry *g, const convx_dw_layout *L,
                                                           const ptrdiff_t *off, DT *scratch) {
    DT *buf = scratch, *res = scratch + L->row_phases * L->col_phases * L->phase;
    const ptrdiff_t out_w = g->out_w, plane_out = g->out_h * out_w, cols = L->cols;
    for (ptrdiff_t oh0 = 0; oh0 < g->out_h; oh0 += L->band) {
        const ptrdiff_t band = convx_dw_min(L->band, g->out_h - oh0);
        /* The outputs' lines, owned before the copy below stores to them: a burst of stores to
         * lines not in cache would wait for each one's read in turn. (Prefetching the next planes'
         * input as well made no difference or lost: the hardware prefetcher follows the rows.) */
        for (ptrdiff_t p = 0; p < count; p++)
            for (ptrdiff_t m = 0; m < multiplier; m++)
                convx_dw_prefetch_write(out + p * out_stride + m * plane_out + oh0 * out_w, band * out_w * sizeof(DT));
        CONVX_DW(convx_dw_fill)(x, x_stride, count, g->height, g->width, oh0 * g->stride_h - g->pad_h, L, buf,
                                L->band < g->out_h, 0);
        const ptrdiff_t lanes = ((count - 1) * L->lane_rows + band) * cols;
        for (ptrdiff_t m = 0; m < multiplier; m++) {
            CONVX_DW(convx_dw_gather)(buf, off, L->taps, w + m * L->taps, bias != NULL ? bias[m] : (DT)0, lanes, res,
                                      0);
            CONVX_DW(convx_dw_copy)(res, L->lane_rows * cols, cols, out + m * plane_out + oh0 * out_w, out_stride,
                                    out_w, count, band, out_w);
        }
    }
}

/* acc[t * 16 + l] += sum over the lanes f = l (mod WB) of [0, lanes) of dy[f] * buf[off[t] + f] for
 * t < n: per tap, WB partial sums in registers (unrolled where n is a literal); exactly `lanes` lanes. */
CONVX_DW_INLINE void CONVX_DW(convx_dw_dot_pass)(const DT *CONVX_RESTRICT buf, const ptrdiff_t *off, ptrdiff_t n,
                                                 const DT *CONVX_RESTRICT dy, ptrdiff_t lanes, DT *CONVX_RESTRICT acc) {
    const ptrdiff_t whole = lanes / CONVX_DW_WB * CONVX_DW_WB;
    DT a[16][CONVX_DW_WB];
    for (ptrdiff_t t = 0; t < n; t++)
        for (ptrdiff_t l = 0; l < CONVX_DW_WB; l++) a[t][l] = acc[t * 16 + l];
    for (ptrdiff_t f0 = 0; f0 < whole; f0 += CONVX_DW_WB) {
        CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_DW_WB; l++) {
            const DT d = dy[f0 + l];
            for (ptrdiff_t t = 0; t < n; t++) a[t][l] += d * buf[off[t] + f0 + l];
        }
    }
    for (ptrdiff_t l = 0; l < lanes - whole; l++) {
        const DT d = dy[whole + l];
        for (ptrdiff_t t = 0; t < n; t++) a[t][l] += d * buf[off[t] + whole + l];
    }
    for (ptrdiff_t t = 0; t < n; t++)
        for (ptrdiff_t l = 0; l < CONVX_DW_WB; l++) acc[t * 16 + l] = a[t][l];
}

/* convx_dw_dot_pass for every tap, 16 at a time, the count of each pass as a literal. */
CONVX_CLONES static void CONVX_DW(convx_dw_dot)(const DT *buf, const ptrdiff_t *off, ptrdiff_t taps, const DT *dy,
                                                ptrdiff_t lanes, DT *acc) {
    for (ptrdiff_t t0 = 0; t0 < taps; t0 += 16) {
        const ptrdiff_t n = convx_dw_min(16, taps - t0);
#define CONVX_DW_DOT_CASE(N)                                                                        \
    case N:                                                                                         \
        CONVX_DW(convx_dw_dot_pass)(buf, off + t0, N, dy, lanes, acc + t0 * 16);                    \
        break;
        switch (n) {
            CONVX_DW_DOT_CASE(1)
            CONVX_DW_DOT_CASE(2)
            CONVX_DW_DOT_CASE(3)
            CONVX_DW_DOT_CASE(4)
            CONVX_DW_DOT_CASE(5)
            CONVX_DW_DOT_CASE(6)
            CONVX_DW_DOT_CASE(7)
            CONVX_DW_DOT_CASE(8)
            CONVX_DW_DOT_CASE(9)
            CONVX_DW_DOT_CASE(10)
            CONVX_DW_DOT_CASE(11)
            CONVX_DW_DOT_CASE(12)
            CONVX_DW_DOT_CASE(13)
            CONVX_DW_DOT_CASE(14)
            CONVX_DW_DOT_CASE(15)
            default:
                CONVX_DW(convx_dw_dot_pass)(buf, off + t0, 16, dy, lanes, acc + t0 * 16);
        }
#undef CONVX_DW_DOT_CASE
    }
}

/* grad_w[m, i, j] = sum_{p, oh, ow} dy[p, m, oh, ow] * x_padded[p, oh*sh + i*dh, ow*sw + j*dw] over the
 * `batch` planes x + p * x_stride of one input channel and dy + p * dy_stride + m * out_h * out_w of
 * its `multiplier` output channels; grad_w overwritten (multiplier * taps values). *dirty: set
 * once a plane with a non-finite value has gone through this thread's buffer (from then on the
 * thread sums the stored lanes only: the others may pair a zero with it). scratch:
 * convx_dw_weight_scratch elements, cleared before the thread's first call. */
CONVX_CLONES static void CONVX_DW(convx_dw_weight_channel)(const DT *x, ptrdiff_t x_stride, const DT *dy,
                                                           ptrdiff_t dy_stride, ptrdiff_t batch,
                                                           ptrdiff_t multiplier, DT *grad_w,
                                                           const convx_dw_geometry *g, const convx_dw_layout *L,
                                                           const ptrdiff_t *off, DT *scratch, int *dirty) {
    DT *buf = scratch, *dyl = scratch + L->row_phases * L->col_phases * L->phase;
    DT *acc = dyl + convx_dw_lanes_size(L);
    const ptrdiff_t out_w = g->out_w, plane_out = g->out_h * out_w, cols = L->cols, taps = L->taps;
    memset(acc, 0, multiplier * taps * 16 * sizeof(DT));
    for (ptrdiff_t n0 = 0; n0 < batch; n0 += L->planes) {
        const ptrdiff_t count = convx_dw_min(L->planes, batch - n0);
        for (ptrdiff_t oh0 = 0; oh0 < g->out_h; oh0 += L->band) {
            const ptrdiff_t band = convx_dw_min(L->band, g->out_h - oh0);
            if (!CONVX_DW(convx_dw_fill)(x + n0 * x_stride, x_stride, count, g->height, g->width,
                                         oh0 * g->stride_h - g->pad_h, L, buf, L->band < g->out_h, 1))
                *dirty = 1;
            const ptrdiff_t lanes = ((count - 1) * L->lane_rows + band) * cols;
            for (ptrdiff_t m = 0; m < multiplier; m++) {
                DT *acc_m = acc + m * taps * 16;
                CONVX_DW(convx_dw_copy)(dy + n0 * dy_stride + m * plane_out + oh0 * out_w, dy_stride, out_w, dyl,
                                        L->lane_rows * cols, cols, count, band, out_w);
                if (!*dirty) {
                    CONVX_DW(convx_dw_dot)(buf, off, taps, dyl, lanes, acc_m);
                    continue;
                }
                for (ptrdiff_t p = 0; p < count; p++) {
                    for (ptrdiff_t r = 0; r < band; r++) {
                        const ptrdiff_t f = (p * L->lane_rows + r) * cols;
                        for (ptrdiff_t t = 0; t < taps; t++) {
                            const DT *CONVX_RESTRICT at = buf + off[t] + f;
                            DT total = 0;
                            CONVX_SIMD_SUM(total) for (ptrdiff_t o = 0; o < out_w; o++) total += dyl[f + o] * at[o];
                            acc_m[t * 16] += total;
                        }
                    }
                }
            }
        }
    }
    for (ptrdiff_t m = 0; m < multiplier; m++) {
        for (ptrdiff_t t = 0; t < taps; t++) {
            const DT *CONVX_RESTRICT a = acc + (m * taps + t) * 16;
            DT total = 0;
            for (ptrdiff_t l = 0; l < CONVX_DW_WB; l++) total += a[l];
            grad_w[m * taps + t] = total;
        }
    }
}

/* grad_in[p, h, w] = sum over m and the taps (i, j) and outputs (oh, ow) with oh*sh - ph + i*dh = h,
 * ow*sw - pw + j*dw = w of w[m, i, j] * dy[p, m, oh, ow], for the `count` planes dy + p * dy_stride (their
 * `multiplier` output channels out_h * out_w apart) and grad_in + p * gi_stride (overwritten). off,
 * taps, start: convx_dw_scatter_offsets; scratch: convx_dw_input_scratch elements, cleared before
 * the thread's first call. */
CONVX_CLONES static void CONVX_DW(convx_dw_input_planes)(const DT *dy, ptrdiff_t dy_stride, ptrdiff_t count,
                                                         const DT *w, ptrdiff_t multiplier, DT *grad_in,
                                                         ptrdiff_t gi_stride, const convx_dw_geometry *g,
                                                         const convx_dw_layout *L, const ptrdiff_t *off,
                                                         const ptrdiff_t *taps, const ptrdiff_t *start,
                                                         DT *scratch) {
    const ptrdiff_t sh = g->stride_h, sw = g->stride_w, ph = g->pad_h, pw = g->pad_w;
    const ptrdiff_t width = g->width, cols = L->cols, slot = L->slot_rows, n_taps = L->taps;
    const ptrdiff_t lanes_size = convx_dw_lanes_size(L);
    const ptrdiff_t phase_rows = convx_dw_ceil(g->height + ph, sh);
    DT *buf = scratch, *res = scratch + L->phase, *w_phase = res + sh * sw * lanes_size;
    const ptrdiff_t plane_out = g->out_h * g->out_w;
    for (ptrdiff_t a0 = 0; a0 < phase_rows; a0 += L->band) {
        const ptrdiff_t band = convx_dw_min(L->band, phase_rows - a0);
        const ptrdiff_t lanes = ((count - 1) * slot + band) * cols;
        const ptrdiff_t h0 = convx_dw_max(0, a0 * sh - ph), h1 = convx_dw_min(g->height, (a0 + band) * sh - ph);
        /* as in convx_dw_forward_planes: grad_in's lines owned before the copy stores to them */
        for (ptrdiff_t p = 0; p < count && h1 > h0; p++)
            convx_dw_prefetch_write(grad_in + p * gi_stride + h0 * width, (h1 - h0) * width * sizeof(DT));
        for (ptrdiff_t m = 0; m < multiplier; m++) {
            CONVX_DW(convx_dw_fill)(dy + m * plane_out, dy_stride, count, g->out_h, g->out_w, a0, L, buf,
                                    L->band < phase_rows, 0);
            for (ptrdiff_t t = 0; t < n_taps; t++) w_phase[t] = w[m * n_taps + taps[t]];
            for (ptrdiff_t k = 0; k < sh * sw; k++) {
                if (start[k + 1] > start[k])
                    CONVX_DW(convx_dw_gather)(buf, off + start[k], start[k + 1] - start[k], w_phase + start[k], 0,
                                              lanes, res + k * lanes_size, m > 0);
                else if (m == 0)
                    memset(res + k * lanes_size, 0, lanes * sizeof(DT));
            }
        }
        if (sw == 1) {
            /* the rows of phase q: h = h_q, h_q + sh, ... */
            for (ptrdiff_t q = 0; q < sh; q++) {
                const ptrdiff_t h_q = h0 + convx_dw_floormod(q - h0 - ph, sh);
                if (h_q >= h1) continue;
                const ptrdiff_t t = (h_q + ph) / sh - a0;
                CONVX_DW(convx_dw_copy)(res + q * lanes_size + t * cols + pw, slot * cols, cols, grad_in + h_q * width,
                                        gi_stride, sh * width, count, convx_dw_ceil(h1 - h_q, sh), width);
            }
            continue;
        }
        for (ptrdiff_t p = 0; p < count; p++) {
            for (ptrdiff_t h = h0; h < h1; h++) {
                const ptrdiff_t q = (h + ph) % sh, t = (h + ph) / sh - a0;
                const DT *CONVX_RESTRICT row = res + q * sw * lanes_size + (p * slot + t) * cols;
                DT *CONVX_RESTRICT dst = grad_in + p * gi_stride + h * width;
                if (sw == 2) {
                    /* column c takes phase (c + pw) % 2, lane (c + pw) / 2 */
                    ptrdiff_t c = 0;
                    if ((pw & 1) && width > 0) {
                        dst[0] = row[lanes_size + pw / 2];
                        c = 1;
                    }
                    const DT *CONVX_RESTRICT even = row + (c + pw) / 2, *CONVX_RESTRICT odd = even + lanes_size;
                    const ptrdiff_t pairs = (width - c) / 2;
                    DT *CONVX_RESTRICT out = dst + c;
                    CONVX_SIMD for (ptrdiff_t b = 0; b < pairs; b++) {
                        out[2 * b] = even[b];
                        out[2 * b + 1] = odd[b];
                    }
                    if ((width - c) & 1) out[2 * pairs] = even[pairs];
                } else {
                    for (ptrdiff_t c = 0; c < width; c++)
                        dst[c] = row[((c + pw) % sw) * lanes_size + (c + pw) / sw];
                }
            }
        }
    }
}

#undef CONVX_DW_GB
#undef CONVX_DW_WB
#undef CONVX_DW_INLINE
#undef CONVX_DW
#undef CONVX_DW_JOIN
#undef CONVX_DW_JOIN2
