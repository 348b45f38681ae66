/* The direct max forward of the 8-bit integers, included by _pool.h with PT the type (int8_t,
 * uint8_t) and PS its suffix (i8, u8).
 *
 * The floats' phase split tracks each winner's offset in the element type, which 8 bits cannot
 * hold; here the running maxima keep their type and the winning tap's number goes in a byte beside
 * them (windows of at most CONVX_POOL_DIRECT_TAPS taps). Each
 * output row sweeps its taps in row-major order: the interior windows (all of the kernel's width
 * inside the input) one tap at a time across the whole run of them, so that the sweep is a loop
 * over outputs the compiler vectorises; the windows over the left and right padding one at a time
 * over their taps inside the input. A window starts from its first tap inside the input and a
 * later tap wins only if strictly greater: the padding never wins, and ties go to the first
 * maximum, as in every other max kernel. */

/* best[o], tap[o] for o in [lo, hi): the running maxima over tap t of the interior windows of one
 * output row, whose taps along this row start at row[o * sw]; ``first`` starts them afresh. The tap
 * numbers are 8-bit like the values, so that the select vectorises at one width; in vectors of 16
 * lanes, not AVX-512's 64, which the output rows of a CNN (7 to 112) would mostly leave scalar. */
#ifndef CONVX_SIMD16
#if defined(_MSC_VER)
#define CONVX_SIMD16
#else
#define CONVX_SIMD16 CONVX_PRAGMA(omp simd simdlen(16))
#endif
#endif
CONVX_POOL_INLINE void CONVX_POOL(convx_max_direct_tap)(const PT *CONVX_RESTRICT row, ptrdiff_t sw, ptrdiff_t lo,
                                                       ptrdiff_t hi, uint8_t t, int first, PT *CONVX_RESTRICT best,
                                                       uint8_t *CONVX_RESTRICT tap) {
    if (first) {
        CONVX_SIMD16 for (ptrdiff_t o = lo; o < hi; o++) {
            best[o] = row[o * sw];
            tap[o] = t;
        }
        return;
    }
    CONVX_SIMD16 for (ptrdiff_t o = lo; o < hi; o++) {
        const PT v = row[o * sw];
        const int take = v > best[o];
        best[o] = take ? v : best[o];
        tap[o] = take ? t : tap[o];
    }
}

/* out[oh, ow] = the maximum of the window's taps inside the input, indices[oh, ow] = its flat index in
 * the plane (indices may be NULL): the first maximum in row-major window order. The caller
 * guarantees kernel_h * kernel_w <= CONVX_POOL_DIRECT_TAPS. scratch: convx_max_direct_scratch(g) bytes. */
CONVX_CLONES static void CONVX_POOL(convx_max_pool_direct)(const PT *CONVX_RESTRICT plane, PT *CONVX_RESTRICT out,
                                                           int64_t *CONVX_RESTRICT indices, PT *CONVX_RESTRICT scratch,
                                                           const convx_pool_geometry *g) {
    const ptrdiff_t width = g->width, out_w = g->out_w, sh = g->stride_h, sw = g->stride_w;
    const ptrdiff_t dh = g->dilation_h, dw = g->dilation_w, kw = g->kernel_w, lo = g->inner_lo, hi = g->inner_hi;
    PT *best = scratch;
    uint8_t *tap = (uint8_t *)(void *)(scratch + out_w);
    /* at[i * kw + j]: tap (i, j)'s offset from its window's corner. */
    int64_t at[CONVX_POOL_DIRECT_TAPS];
    for (ptrdiff_t i = 0; i < g->kernel_h; i++)
        for (ptrdiff_t j = 0; j < kw; j++) at[i * kw + j] = (int64_t)(i * dh) * width + j * dw;
    for (ptrdiff_t oh = 0; oh < g->out_h; oh++) {
        const ptrdiff_t h0 = oh * sh - g->pad_h, i_lo = g->row_lo[oh], i_hi = g->row_hi[oh];
        /* The border windows, one at a time over their taps inside the input. */
        for (ptrdiff_t ow = 0; ow < out_w; ow++) {
            if (ow == lo && lo < hi) ow = hi;
            if (ow >= out_w) break;
            const ptrdiff_t w0 = ow * sw - g->pad_w, j_lo = g->col_lo[ow], j_hi = g->col_hi[ow];
            PT b = plane[(h0 + i_lo * dh) * width + w0 + j_lo * dw];
            uint8_t won = (uint8_t)(i_lo * kw + j_lo);
            for (ptrdiff_t i = i_lo; i < i_hi; i++) {
                for (ptrdiff_t j = j_lo; j < j_hi; j++) {
                    const PT v = plane[(h0 + i * dh) * width + w0 + j * dw];
                    if (v > b) {
                        b = v;
                        won = (uint8_t)(i * kw + j);
                    }
                }
            }
            best[ow] = b;
            tap[ow] = won;
        }
        /* The interior windows, tap by tap across all of them (literal strides vectorise best). */
        for (ptrdiff_t i = i_lo; i < i_hi && lo < hi; i++) {
            const PT *row = plane + (h0 + i * dh) * width - g->pad_w;
            for (ptrdiff_t j = 0; j < kw; j++) {
                const uint8_t t = (uint8_t)(i * kw + j);
                const int first = i == i_lo && j == 0;
                if (sw == 1)
                    CONVX_POOL(convx_max_direct_tap)(row + j * dw, 1, lo, hi, t, first, best, tap);
                else if (sw == 2)
                    CONVX_POOL(convx_max_direct_tap)(row + j * dw, 2, lo, hi, t, first, best, tap);
                else
                    CONVX_POOL(convx_max_direct_tap)(row + j * dw, sw, lo, hi, t, first, best, tap);
            }
        }
        memcpy(out + oh * out_w, best, (size_t)out_w * sizeof(PT));
        if (indices == NULL) continue;
        int64_t *CONVX_RESTRICT where = indices + oh * out_w;
        const int64_t corner = (int64_t)h0 * width - g->pad_w;
        for (ptrdiff_t ow = 0; ow < out_w; ow++) where[ow] = corner + ow * sw + at[tap[ow]];
    }
}
