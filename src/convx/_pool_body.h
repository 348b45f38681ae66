/* The pooling plane kernels for one element type: included by _pool.h with PT the type (float,
 * double), PU the unsigned integer of its width and PS its suffix (f, d). With
 * CONVX_POOL_MAX_ONLY (the 8-bit integers: i8, u8) only the separable max forward, which never
 * pads, tracks positions as integers and needs no -inf: max pooling without a float round trip. */

#if !CONVX_POOL_MAX_ONLY

/* best[f], offset[f] for the lanes f of [0, lanes): the maximum over the taps (i, j) of
 * phases[tap_at(i, j) + f] (NaN wins, the last NaN in tap order) and, with track, the winner's
 * offset i*dh*W + j*dw. Taps in the register loop when the geometry is literal; otherwise one
 * sweep per tap over best and offset. */
CONVX_POOL_INLINE void CONVX_POOL(convx_max_sweep)(const PT *CONVX_RESTRICT phases, ptrdiff_t lanes,
                                                   const convx_pool_geometry *g, convx_pool_phases f,
                                                   ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                                                   ptrdiff_t dh, ptrdiff_t dw, int literal, int track,
                                                   PT *CONVX_RESTRICT best, PT *CONVX_RESTRICT offset) {
    const ptrdiff_t width = g->width;
#define CONVX_TAP_AT(i, j)                                                                                \
    ((((i) * dh % sh) * sw + (j) * dw % sw) * f.plane + ((i) * dh / sh) * f.cols + (j) * dw / sw)
    if (literal) {
        for (ptrdiff_t f0 = 0; f0 < lanes; f0 += CONVX_POOL_BLOCK) {
            CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_POOL_BLOCK; l++) {
                PT b = (PT)-INFINITY, at = 0;
                for (ptrdiff_t i = 0; i < kh; i++) {
                    for (ptrdiff_t j = 0; j < kw; j++) {
                        const PT v = phases[CONVX_TAP_AT(i, j) + f0 + l];
                        /* Computed outside the select: a float add inside a branch may trap, so
                         * the compiler would keep the branch instead of a blend. */
                        const PT candidate = (PT)(i * dh * width + j * dw);
                        const int take = (v > b) | (v != v);
                        b = take ? v : b;
                        if (track) at = take ? candidate : at;
                    }
                }
                best[f0 + l] = b;
                if (track) offset[f0 + l] = at;
            }
        }
        return;
    }
    ptrdiff_t k;
    CONVX_SIMD for (k = 0; k < lanes; k++) {
        best[k] = (PT)-INFINITY;
        offset[k] = 0;
    }
    for (ptrdiff_t i = 0; i < kh; i++) {
        for (ptrdiff_t j = 0; j < kw; j++) {
            const PT *CONVX_RESTRICT tap = phases + CONVX_TAP_AT(i, j);
            const PT candidate = (PT)(i * dh * width + j * dw);
            CONVX_SIMD for (k = 0; k < lanes; k++) {
                const PT v = tap[k];
                const int take = (v > best[k]) | (v != v);
                best[k] = take ? v : best[k];
                if (track) offset[k] = take ? candidate : offset[k];
            }
        }
    }
#undef CONVX_TAP_AT
}

/* Phase plane (q, p) of the band of output rows from oh0: split[(q*sw + p) * f.plane + r * f.cols + c]
 * = padded[(oh0 + r)*sh + q, c*sw + p], -inf outside the input. */
CONVX_POOL_INLINE void CONVX_POOL(convx_max_split)(const PT *CONVX_RESTRICT plane, const convx_pool_geometry *g,
                                                   convx_pool_phases f, ptrdiff_t oh0, PT *CONVX_RESTRICT split) {
    const ptrdiff_t height = g->height, width = g->width, sh = g->stride_h, sw = g->stride_w;
    const ptrdiff_t ph = g->pad_h, pw = g->pad_w;
    ptrdiff_t p, c, rr, lo[CONVX_POOL_BLOCK], hi[CONVX_POOL_BLOCK];
    /* Phase p holds the input columns c*sw + p - pw for c in [lo[p], hi[p]). */
    for (p = 0; p < sw; p++) {
        ptrdiff_t a = pw > p ? (pw - p + sw - 1) / sw : 0, b = (width + pw - p + sw - 1) / sw;
        if (b > f.cols) b = f.cols;
        if (b < a) b = a;
        if (p < CONVX_POOL_BLOCK) {
            lo[p] = a;
            hi[p] = b;
        }
    }
    ptrdiff_t q = 0, r = 0;
    for (rr = 0; rr < f.rows * sh; rr++, q++) {
        if (q == sh) {
            q = 0;
            r++;
        }
        const ptrdiff_t h = oh0 * sh + rr - ph;
        PT *CONVX_RESTRICT dst = split + q * sw * f.plane + r * f.cols;
        if (h < 0 || h >= height) {
            for (p = 0; p < sw; p++)
                for (c = 0; c < f.cols; c++) dst[p * f.plane + c] = (PT)-INFINITY;
            continue;
        }
        const PT *CONVX_RESTRICT in = plane + h * width - pw;
        if (sw == 2) {
            /* Both phases in one loop where both land inside the input: a pair of loads that
             * vectorises; then the columns where only one does, and the padding. Where the input
             * goes on far enough, the loop runs in whole blocks: the stores past b land in the
             * next row (written after this one) or in the slack after the phase plane. */
            PT *CONVX_RESTRICT even = dst, *CONVX_RESTRICT odd = dst + f.plane;
            const ptrdiff_t a = lo[0] > lo[1] ? lo[0] : lo[1], b = hi[0] < hi[1] ? hi[0] : hi[1];
            const ptrdiff_t blocks = b > a ? (b - a + CONVX_POOL_BLOCK - 1) / CONVX_POOL_BLOCK : 0;
            if (h * width - pw + 2 * (a + blocks * CONVX_POOL_BLOCK) <= height * width) {
                for (ptrdiff_t c0 = a; c0 < a + blocks * CONVX_POOL_BLOCK; c0 += CONVX_POOL_BLOCK) {
                    CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_POOL_BLOCK; l++) {
                        even[c0 + l] = in[2 * (c0 + l)];
                        odd[c0 + l] = in[2 * (c0 + l) + 1];
                    }
                }
            } else {
                CONVX_SIMD for (c = a; c < b; c++) {
                    even[c] = in[2 * c];
                    odd[c] = in[2 * c + 1];
                }
            }
            for (p = 0; p < 2; p++) {
                PT *CONVX_RESTRICT phase = dst + p * f.plane;
                for (c = 0; c < f.cols; c++) {
                    if (c == a && a < b) c = b;
                    if (c >= f.cols) break;
                    phase[c] = c >= lo[p] && c < hi[p] ? in[2 * c + p] : (PT)-INFINITY;
                }
            }
        } else {
            for (p = 0; p < sw; p++) {
                PT *CONVX_RESTRICT phase = dst + p * f.plane;
                const ptrdiff_t a = p < CONVX_POOL_BLOCK ? lo[p] : 0, b = p < CONVX_POOL_BLOCK ? hi[p] : 0;
                if (p >= CONVX_POOL_BLOCK) {
                    for (c = 0; c < f.cols; c++) {
                        const ptrdiff_t w = c * sw + p;
                        phase[c] = w >= pw && w < pw + width ? in[w] : (PT)-INFINITY;
                    }
                    continue;
                }
                for (c = 0; c < a; c++) phase[c] = (PT)-INFINITY;
                CONVX_SIMD for (c = a; c < b; c++) phase[c] = in[c * sw + p];
                for (c = b; c < f.cols; c++) phase[c] = (PT)-INFINITY;
            }
        }
    }
}

/* The 2x2 stride-2 windows of a plane without padding, dilation or windows past its end (ceil_mode),
 * straight from the input: each
 * tap is read once, so splitting the plane first would only add a pass. Blocks of outputs run
 * whole where the reads stay inside the plane (the lanes past out_w are computed and dropped). */
CONVX_POOL_INLINE void CONVX_POOL(convx_max_pool_2x2)(const PT *CONVX_RESTRICT plane, PT *CONVX_RESTRICT out,
                                                      int64_t *CONVX_RESTRICT indices,
                                                      const convx_pool_geometry *g, int track) {
    const ptrdiff_t width = g->width, out_w = g->out_w;
    PT best[CONVX_POOL_BLOCK], offset[CONVX_POOL_BLOCK];
    for (ptrdiff_t oh = 0; oh < g->out_h; oh++) {
        const PT *CONVX_RESTRICT top = plane + 2 * oh * width, *CONVX_RESTRICT bottom = top + width;
        PT *CONVX_RESTRICT out_row = out + oh * out_w;
        int64_t *CONVX_RESTRICT where = track ? indices + oh * out_w : NULL;
        const ptrdiff_t corner = 2 * oh * width;
        for (ptrdiff_t o0 = 0; o0 < out_w; o0 += CONVX_POOL_BLOCK) {
            const ptrdiff_t n = out_w - o0 < CONVX_POOL_BLOCK ? out_w - o0 : CONVX_POOL_BLOCK;
            if (n < CONVX_POOL_BLOCK && corner + width + 2 * (o0 + CONVX_POOL_BLOCK) > g->height * width) {
                for (ptrdiff_t l = 0; l < n; l++) {
                    const ptrdiff_t o = o0 + l;
                    PT b = (PT)-INFINITY, at = 0;
                    const PT v[4] = {top[2 * o], top[2 * o + 1], bottom[2 * o], bottom[2 * o + 1]};
                    const PT cand[4] = {0, 1, (PT)width, (PT)(width + 1)};
                    for (int t = 0; t < 4; t++) {
                        const int take = (v[t] > b) | (v[t] != v[t]);
                        b = take ? v[t] : b;
                        at = take ? cand[t] : at;
                    }
                    best[l] = b;
                    offset[l] = at;
                }
            } else {
                CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_POOL_BLOCK; l++) {
                    PT b = (PT)-INFINITY, at = 0;
                    for (ptrdiff_t i = 0; i < 2; i++) {
                        for (ptrdiff_t j = 0; j < 2; j++) {
                            const PT v = top[i * width + 2 * (o0 + l) + j];
                            const PT candidate = (PT)(i * width + j);
                            const int take = (v > b) | (v != v);
                            b = take ? v : b;
                            at = take ? candidate : at;
                        }
                    }
                    best[l] = b;
                    offset[l] = at;
                }
            }
            if (n == CONVX_POOL_BLOCK) {
                CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_POOL_BLOCK; l++) out_row[o0 + l] = best[l];
                if (track)
                    CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_POOL_BLOCK; l++)
                        where[o0 + l] = corner + 2 * (o0 + l) + (int)offset[l];
            } else {
                for (ptrdiff_t l = 0; l < n; l++) out_row[o0 + l] = best[l];
                if (track)
                    for (ptrdiff_t l = 0; l < n; l++) where[o0 + l] = corner + 2 * (o0 + l) + (int)offset[l];
            }
        }
    }
}

/* out[oh, ow] = the maximum of the window's taps (padding -inf, NaN wins), indices[oh, ow] = its
 * flat index in the plane (indices may be NULL). Window offsets are tracked as PT, so the caller
 * guarantees they are exact: dh*(kh-1)*W + dw*(kw-1) below 2^24 (float) or 2^31 (double).
 * scratch: convx_max_pool_scratch(g) elements. */
CONVX_CLONES static void CONVX_POOL(convx_max_pool_plane)(const PT *CONVX_RESTRICT plane, PT *CONVX_RESTRICT out,
                                                          int64_t *CONVX_RESTRICT indices, PT *CONVX_RESTRICT scratch,
                                                          const convx_pool_geometry *g) {
    const convx_pool_phases f = convx_max_pool_phases(g);
    const ptrdiff_t width = g->width, out_w = g->out_w, kh = g->kernel_h, kw = g->kernel_w;
    const ptrdiff_t sh = g->stride_h, sw = g->stride_w, dh = g->dilation_h, dw = g->dilation_w;
    if (convx_max_pool_2x2_applies(g)) {
        CONVX_POOL(convx_max_pool_2x2)(plane, out, indices, g, indices != NULL);
        return;
    }
    PT *split = scratch;
    PT *best = split + sh * sw * f.plane + f.cols + CONVX_POOL_BLOCK;
    PT *offset = best + f.lanes;
    ptrdiff_t oh, o;
    for (ptrdiff_t oh0 = 0; oh0 < g->out_h; oh0 += f.band) {
        const ptrdiff_t oh1 = oh0 + f.band < g->out_h ? oh0 + f.band : g->out_h;
        const ptrdiff_t lanes = ((oh1 - oh0) * f.cols + CONVX_POOL_BLOCK - 1) / CONVX_POOL_BLOCK * CONVX_POOL_BLOCK;
        CONVX_POOL(convx_max_split)(plane, g, f, oh0, split);
        /* Literal geometry lets the compiler unroll the taps into the register loop. */
#define CONVX_MAX_SWEEP(KH, KW, SH, SW, LITERAL)                                                              \
    do {                                                                                                    \
        if (indices != NULL)                                                                                \
            CONVX_POOL(convx_max_sweep)(split, lanes, g, f, KH, KW, SH, SW, 1, 1, LITERAL, 1, best, offset);   \
        else                                                                                                \
            CONVX_POOL(convx_max_sweep)(split, lanes, g, f, KH, KW, SH, SW, 1, 1, LITERAL, 0, best, offset);   \
    } while (0)
        if (dh == 1 && dw == 1 && kh == 2 && kw == 2 && sh == 2 && sw == 2)
            CONVX_MAX_SWEEP(2, 2, 2, 2, 1);
        else if (dh == 1 && dw == 1 && kh == 3 && kw == 3 && sh == 2 && sw == 2)
            CONVX_MAX_SWEEP(3, 3, 2, 2, 1);
        else if (dh == 1 && dw == 1 && kh == 3 && kw == 3 && sh == 1 && sw == 1)
            CONVX_MAX_SWEEP(3, 3, 1, 1, 1);
        else if (dh == 1 && dw == 1 && kh == 2 && kw == 2 && sh == 1 && sw == 1)
            CONVX_MAX_SWEEP(2, 2, 1, 1, 1);
        else if (dh == 1 && dw == 1 && kh == 3 && kw == 3 && sh == 3 && sw == 3)
            CONVX_MAX_SWEEP(3, 3, 3, 3, 1);
        else if (indices != NULL)
            CONVX_POOL(convx_max_sweep)(split, lanes, g, f, kh, kw, sh, sw, dh, dw, 0, 1, best, offset);
        else
            CONVX_POOL(convx_max_sweep)(split, lanes, g, f, kh, kw, sh, sw, dh, dw, 0, 0, best, offset);
#undef CONVX_MAX_SWEEP
        for (oh = oh0; oh < oh1; oh++) {
            const PT *CONVX_RESTRICT row_best = best + (oh - oh0) * f.cols;
            PT *CONVX_RESTRICT out_row = out + oh * out_w;
            CONVX_SIMD for (o = 0; o < out_w; o++) out_row[o] = row_best[o];
            if (indices == NULL) continue;
            const PT *CONVX_RESTRICT row_offset = offset + (oh - oh0) * f.cols;
            const int64_t *CONVX_RESTRICT col_lo = g->col_lo;
            const ptrdiff_t h0 = oh * sh - g->pad_h, corner = h0 * width - g->pad_w;
            const ptrdiff_t first_row = (h0 + g->row_lo[oh] * dh) * width - g->pad_w;
            int64_t *CONVX_RESTRICT where = indices + oh * out_w;
            /* The offsets fit an int, whose conversion vectorises. A window that ends at -inf (no
             * tap beats it, none is NaN) reports its first tap inside the input. */
            CONVX_SIMD for (o = 0; o < out_w; o++) {
                const int64_t won = corner + o * sw + (int)row_offset[o];
                const int64_t first = first_row + o * sw + col_lo[o] * dw;
                where[o] = row_best[o] == (PT)-INFINITY ? first : won;
            }
        }
    }
}

/* One input row of the average backward for windows exactly as wide as their stride: window o
 * covers the columns [o*s - pw, (o+1)*s - pw) clipped to the row, so each column takes the share
 * of at most one window of the output row. ``first``: the row's first window row (dst = 0 +
 * share, 0 where no window covers it), else dst += share. */
CONVX_POOL_INLINE void CONVX_POOL(convx_avg_spread)(PT *CONVX_RESTRICT dst, const PT *CONVX_RESTRICT share,
                                                ptrdiff_t width, ptrdiff_t out_w, ptrdiff_t s, ptrdiff_t pw,
                                                int first) {
    /* Windows [o_lo, o_hi) lie wholly inside the row. */
    ptrdiff_t o_lo = (pw + s - 1) / s, o_hi = (width + pw) / s, w, o;
    if (o_hi > out_w) o_hi = out_w;
    if (o_hi < o_lo) o_hi = o_lo;
    const ptrdiff_t head = o_lo * s - pw < width ? o_lo * s - pw : width;
    const ptrdiff_t tail = o_hi * s - pw > head ? o_hi * s - pw : head;
    for (w = 0; w < head; w++) {
        o = (w + pw) / s;
        if (o < out_w) dst[w] = (first ? (PT)0 : dst[w]) + share[o];
        else if (first) dst[w] = 0;
    }
    if (first) {
        CONVX_SIMD for (o = o_lo; o < o_hi; o++) {
            const PT v = (PT)0 + share[o];
            for (ptrdiff_t j = 0; j < s; j++) dst[o * s - pw + j] = v;
        }
    } else {
        CONVX_SIMD for (o = o_lo; o < o_hi; o++) {
            const PT v = share[o];
            for (ptrdiff_t j = 0; j < s; j++) dst[o * s - pw + j] += v;
        }
    }
    for (w = tail; w < width; w++) {
        o = (w + pw) / s;
        if (o < out_w) dst[w] = (first ? (PT)0 : dst[w]) + share[o];
        else if (first) dst[w] = 0;
    }
}

/* grad_in rows [row_begin, row_end) of the input gradient of one plane of average pooling whose
 * windows are as wide as their stride (kernel_w == stride_w, any kernel_h and stride_h): grad_in[h, w]
 * = sum over the windows holding (h, w), in output order, of grad_out[oh, ow] / (row_div[oh] *
 * col_div[ow]), every element written once per window row and never read before it is written.
 * A band of rows takes exactly the sums the whole plane does (the windows over a row, in the same
 * order), so bands may be written by separate calls. scratch: convx_avg_backward_scratch(g) elements. */
CONVX_CLONES static void CONVX_POOL(convx_avg_tiled_plane)(const PT *CONVX_RESTRICT grad_out,
                                                              PT *CONVX_RESTRICT grad_in, PT *CONVX_RESTRICT share,
                                                              const convx_pool_geometry *g, const int64_t *row_div,
                                                              const int64_t *col_div, ptrdiff_t row_begin,
                                                              ptrdiff_t row_end) {
    const ptrdiff_t width = g->width, out_w = g->out_w, s = g->stride_w, pw = g->pad_w;
    ptrdiff_t next = row_begin, oh, i, o, oh_first, oh_end, unused;
    convx_avg_row_windows(g, row_begin, &oh_first, &unused);
    convx_avg_row_windows(g, row_end - 1, &unused, &oh_end);
    for (oh = oh_first; oh < oh_end; oh++) {
        const PT *src = grad_out + oh * out_w;
        const int64_t rd = row_div[oh];
        const ptrdiff_t top = oh * g->stride_h - g->pad_h;
        const ptrdiff_t i_lo = row_begin - top > g->row_lo[oh] ? row_begin - top : g->row_lo[oh];
        const ptrdiff_t i_hi = row_end - top < g->row_hi[oh] ? row_end - top : g->row_hi[oh];
        if (i_lo >= i_hi) continue;
        CONVX_SIMD for (o = 0; o < out_w; o++) share[o] = src[o] / (PT)(rd * col_div[o]);
        for (i = i_lo; i < i_hi; i++) {
            const ptrdiff_t h = top + i;
            const int first = h >= next;
            /* Rows that no window holds (below the previous window, above this one) are zero. */
            if (h > next) memset(grad_in + next * width, 0, (size_t)((h - next) * width) * sizeof(PT));
            if (first) next = h + 1;
            PT *dst = grad_in + h * width;
            if (s == 2 && first)
                CONVX_POOL(convx_avg_spread)(dst, share, width, out_w, 2, pw, 1);
            else if (s == 2)
                CONVX_POOL(convx_avg_spread)(dst, share, width, out_w, 2, pw, 0);
            else if (s == 3 && first)
                CONVX_POOL(convx_avg_spread)(dst, share, width, out_w, 3, pw, 1);
            else if (s == 3)
                CONVX_POOL(convx_avg_spread)(dst, share, width, out_w, 3, pw, 0);
            else
                CONVX_POOL(convx_avg_spread)(dst, share, width, out_w, s, pw, first);
        }
    }
    if (next < row_end) memset(grad_in + next * width, 0, (size_t)((row_end - next) * width) * sizeof(PT));
}

/* dst[0], dst[1] = 0 + (the gradient gv where code is left, left + 1; else 0): the two columns of one
 * row of a 2x2 block. The select is a bit mask, not a branch on floats: GCC vectorises that for AVX2
 * too, where the branch stayed scalar (and mispredicted on the random winners: 4x slower). */
static inline void CONVX_POOL(convx_block_pair)(PT gv, int32_t code, int32_t left, PT *CONVX_RESTRICT dst) {
    PU bits, first, second;
    memcpy(&bits, &gv, sizeof bits);
    first = bits & ((PU)0 - (PU)(code == left));
    second = bits & ((PU)0 - (PU)(code == left + 1));
    PT a, b;
    memcpy(&a, &first, sizeof a);
    memcpy(&b, &second, sizeof b);
    dst[0] = (PT)0 + a;
    dst[1] = (PT)0 + b;
}

/* grad_in[indices[o]] += grad_out[o] over the plane's outputs, grad_in overwritten; 1 (and
 * grad_in partly written) if an index lies outside the plane. Each index is read once and the write
 * goes where that read said, so indices rewritten meanwhile by another thread never send a write
 * outside grad_in (the block path below writes only inside each output's own block whatever it
 * reads). Where every index lies in its own 2x2 block (rows 2oh, 2oh+1, columns 2ow, 2ow+1: what
 * a 2x2 stride-2 max pool records), no two outputs share an input, and each input element is written once, with its block's gradient
 * if it is the recorded one and 0 otherwise (0 + gradient, as the scatter onto zeros gives): one
 * vectorised pass instead of a zero fill and a scatter. corners: convx_max_backward_corners (NULL
 * where the blocks do not fit the plane); code: convx_max_backward_scratch int32 elements. */
CONVX_CLONES static int CONVX_POOL(convx_max_backward_plane)(const PT *CONVX_RESTRICT grad_out,
                                                             const int64_t *CONVX_RESTRICT indices,
                                                             PT *CONVX_RESTRICT grad_in,
                                                             const int64_t *CONVX_RESTRICT corners,
                                                             int32_t *CONVX_RESTRICT code, ptrdiff_t height,
                                                             ptrdiff_t width, ptrdiff_t out_h, ptrdiff_t out_w) {
    const ptrdiff_t plane = height * width, n = out_h * out_w;
    const ptrdiff_t whole = (out_w + CONVX_POOL_BLOCK - 1) / CONVX_POOL_BLOCK * CONVX_POOL_BLOCK;
    ptrdiff_t h, w, o;
    if (corners != NULL) {
        uint64_t stray = 0;
        /* code = 2 * (row within the block) + (column within it), for an index in its block; in
         * runs of outputs, so that indices of another pooling (overlapping windows) stop it early. */
        for (ptrdiff_t o0 = 0; o0 < n && !stray; o0 += 4 * CONVX_POOL_BLOCK) {
            const ptrdiff_t o1 = o0 + 4 * CONVX_POOL_BLOCK < n ? o0 + 4 * CONVX_POOL_BLOCK : n;
            CONVX_SIMD_OR(stray) for (o = o0; o < o1; o++) {
                const int64_t k = indices[o] - corners[o];
                /* In its block: k is 0, 1, width or width + 1: within [0, width + 1], not in [2, width). */
                stray |= (uint64_t)(((uint64_t)k > (uint64_t)(width + 1)) | ((uint64_t)(k - 2) < (uint64_t)(width - 2)));
                const int64_t row = k >= width;
                code[o] = (int32_t)(2 * row + k - row * width);
            }
        }
        if (!stray) {
            for (h = 0; h < 2 * out_h; h++) {
                const PT *CONVX_RESTRICT g = grad_out + (h >> 1) * out_w;
                const int32_t *CONVX_RESTRICT row_code = code + (h >> 1) * out_w;
                const int32_t left = (int32_t)(2 * (h & 1));
                PT *CONVX_RESTRICT dst = grad_in + h * width;
                /* Whole blocks where they stay inside the plane and grad_out: the stores past
                 * 2 * out_w land in this row's tail or the next rows, written after them. */
                if (h * width + 2 * whole <= plane && (h >> 1) * out_w + whole <= n) {
                    for (ptrdiff_t o0 = 0; o0 < whole; o0 += CONVX_POOL_BLOCK) {
                        CONVX_SIMD for (ptrdiff_t l = 0; l < CONVX_POOL_BLOCK; l++)
                            CONVX_POOL(convx_block_pair)(g[o0 + l], row_code[o0 + l], left, dst + 2 * (o0 + l));
                    }
                } else {
                    CONVX_SIMD for (o = 0; o < out_w; o++)
                        CONVX_POOL(convx_block_pair)(g[o], row_code[o], left, dst + 2 * o);
                }
                for (w = 2 * out_w; w < width; w++) dst[w] = 0;
            }
            if (2 * out_h < height)
                memset(grad_in + 2 * out_h * width, 0, (size_t)((height - 2 * out_h) * width) * sizeof(PT));
            return 0;
        }
    }
    memset(grad_in, 0, (size_t)plane * sizeof(PT));
    for (o = 0; o < n; o++) {
        /* One read of each index, checked and used: another thread may be rewriting the caller's
         * array, and a second read could bring an address the check never saw (volatile keeps the
         * compiler from reloading it). */
        const int64_t at = *(const volatile int64_t *)&indices[o];
        if ((uint64_t)at >= (uint64_t)plane) return 1;
        grad_in[at] += grad_out[o];
    }
    return 0;
}

/* One input row of the average backward for any windows (see convx_avg_gather_plane): dst[w] =
 * (first ? 0 : dst[w]) + share[ow] for each window ow holding column w, in ascending ow. The
 * interior columns [m_lo*sw - pw, m_hi*sw - pw) go by phase: column m*sw + p - pw lies in the
 * windows m - t for t <= (kw - 1 - p) / sw (none where p >= kw), so each phase is a fixed sum
 * that vectorises along m; the border columns use their ranges [lo[w], hi[w]). */
CONVX_POOL_INLINE void CONVX_POOL(convx_avg_gather_row)(PT *CONVX_RESTRICT dst, const PT *CONVX_RESTRICT share,
                                                        ptrdiff_t width, ptrdiff_t sw, ptrdiff_t kw, ptrdiff_t pw,
                                                        const int64_t *CONVX_RESTRICT lo,
                                                        const int64_t *CONVX_RESTRICT hi, ptrdiff_t m_lo,
                                                        ptrdiff_t m_hi, int first) {
    ptrdiff_t w, m, p, t;
    const ptrdiff_t head = m_lo * sw - pw, tail = m_hi * sw - pw;
    for (w = 0; w < width; w++) {
        if (w == head && m_lo < m_hi) w = tail;
        if (w >= width) break;
        PT v = first ? (PT)0 : dst[w];
        for (ptrdiff_t ow = lo[w]; ow < hi[w]; ow++) v += share[ow];
        dst[w] = v;
    }
    if (m_lo >= m_hi) return;
    PT *CONVX_RESTRICT base = dst - pw;
    CONVX_SIMD for (m = m_lo; m < m_hi; m++) {
        for (p = 0; p < sw; p++) {
            PT v = first ? (PT)0 : base[m * sw + p];
            for (t = (kw - 1 - p) / sw; t >= 0 && p < kw; t--) v += share[m - t];
            base[m * sw + p] = v;
        }
    }
}

/* grad_in rows [row_begin, row_end) of the input gradient of one plane of average pooling, any
 * windows: grad_in[h, w] = the sum over the windows (oh, ow) holding (h, w), in output order (as
 * PyTorch adds them), of grad_out[oh, ow] / (row_div[oh] * col_div[ow]); each input row is written
 * once per window row over it, rows under no window set to 0. Each row gathers from its own windows
 * only, so a band of rows comes out exactly as in the whole plane. lo[w], hi[w]: the windows
 * [lo, hi) holding column w. share: convx_avg_backward_scratch(g) elements (a ring of rows of shares). */
CONVX_CLONES static void CONVX_POOL(convx_avg_gather_plane)(const PT *CONVX_RESTRICT grad_out,
                                                              PT *CONVX_RESTRICT grad_in, PT *CONVX_RESTRICT share,
                                                              const convx_pool_geometry *g, const int64_t *row_div,
                                                              const int64_t *col_div, const int64_t *lo,
                                                              const int64_t *hi, ptrdiff_t row_begin,
                                                              ptrdiff_t row_end) {
    const ptrdiff_t width = g->width, out_w = g->out_w;
    const ptrdiff_t kw = g->kernel_w, sw = g->stride_w;
    const ptrdiff_t pw = g->pad_w, ring = convx_avg_share_rows(g), stride = convx_avg_share_stride(g);
    /* Columns whose every window lies inside the output row, with all of their phase's windows. */
    /* (width + pw - sw) / sw + 1, floored: C's division truncates a negative numerator up. */
    ptrdiff_t m_lo = (kw - 1) / sw, m_hi = width + pw >= sw ? (width + pw - sw) / sw + 1 : 0;
    if (m_lo * sw < pw) m_lo = (pw + sw - 1) / sw;
    if (m_hi > out_w) m_hi = out_w;
    if (m_hi < m_lo) m_hi = m_lo;
    ptrdiff_t h, oh, o, a, b, computed = 0;
    for (h = row_begin; h < row_end; h++) {
        PT *CONVX_RESTRICT dst = grad_in + h * width;
        convx_avg_row_windows(g, h, &a, &b);
        if (a >= b) {
            memset(dst, 0, (size_t)width * sizeof(PT));
            continue;
        }
        /* Shares from this row's first window on (a band's first row need not start at window 0). */
        if (computed < a) computed = a;
        for (; computed < b; computed++) {
            const PT *CONVX_RESTRICT src = grad_out + computed * out_w;
            PT *CONVX_RESTRICT row = share + (computed % ring) * stride;
            const int64_t rd = row_div[computed];
            CONVX_SIMD for (o = 0; o < out_w; o++) row[o] = src[o] / (PT)(rd * col_div[o]);
        }
        for (oh = a; oh < b; oh++) {
            const PT *row = share + (oh % ring) * stride;
            const int first = oh == a;
            /* Literal geometry and flag: each case its own unrolled, vectorised loop. */
#define CONVX_AVG_GATHER(SW, KW)                                                                              \
    (first ? CONVX_POOL(convx_avg_gather_row)(dst, row, width, SW, KW, pw, lo, hi, m_lo, m_hi, 1)               \
           : CONVX_POOL(convx_avg_gather_row)(dst, row, width, SW, KW, pw, lo, hi, m_lo, m_hi, 0))
            if (sw == 2 && kw == 2)
                CONVX_AVG_GATHER(2, 2);
            else if (sw == 2 && kw == 3)
                CONVX_AVG_GATHER(2, 3);
            else if (sw == 1 && kw == 3)
                CONVX_AVG_GATHER(1, 3);
            else if (sw == 3 && kw == 3)
                CONVX_AVG_GATHER(3, 3);
            else
                CONVX_POOL(convx_avg_gather_row)(dst, row, width, sw, kw, pw, lo, hi, m_lo, m_hi, first);
#undef CONVX_AVG_GATHER
        }
    }
}

#endif /* !CONVX_POOL_MAX_ONLY */

/* The separable max pool's sweep along one line of the plane, for the windows of one axis: output
 * o's window holds the in-input positions t = first(o) + j * dil, j < count(o), with first(o) =
 * o * stride - pad + lo[o] * dil and count(o) = hi[o] - lo[o] (windows clipped to the input, so
 * padding costs nothing). Outputs are taken in `order` (by first(o) % dil, ascending o within a
 * residue; NULL when dil is 1): within a residue both ends of the windows only move forward, so a
 * deque of the candidates that no later position beats (NaN beats everything, else a strictly
 * greater value: so the first maximum, or the last NaN, is the front) gives every window's winner
 * with each position pushed and popped once: time linear in the line and the outputs, whatever the
 * window.
 * Row pass (indirect = 0): values line[t]; stores the winning column t in rcol[o].
 * Column pass (indirect = 1): values plane[t * width + rcol[t * out_w]] (the row winners of one
 * output column); stores out[o * out_w] and, with indices, the winner's flat index.
 * dq_pos, dq_val: one entry per position of the line. */
CONVX_POOL_INLINE void CONVX_POOL(convx_max_line)(const PT *CONVX_RESTRICT line, const PT *CONVX_RESTRICT plane,
                                                  ptrdiff_t width, const int32_t *CONVX_RESTRICT rcol_in,
                                                  ptrdiff_t out_w, int indirect, ptrdiff_t outputs,
                                                  ptrdiff_t stride, ptrdiff_t pad, ptrdiff_t dil,
                                                  const int64_t *CONVX_RESTRICT lo, const int64_t *CONVX_RESTRICT hi,
                                                  const int64_t *CONVX_RESTRICT order, int64_t *CONVX_RESTRICT dq_pos,
                                                  PT *CONVX_RESTRICT dq_val, int32_t *CONVX_RESTRICT rcol_out,
                                                  PT *CONVX_RESTRICT out, int64_t *CONVX_RESTRICT indices) {
    ptrdiff_t head = 0, tail = 0, next = 0, residue = -1;
    for (ptrdiff_t k = 0; k < outputs; k++) {
        const ptrdiff_t o = order != NULL ? (ptrdiff_t)order[k] : k;
        const ptrdiff_t a = o * stride - pad + (ptrdiff_t)lo[o] * dil;
        const ptrdiff_t b = a + ((ptrdiff_t)(hi[o] - lo[o]) - 1) * dil;
        const ptrdiff_t r = dil == 1 ? 0 : a % dil;
        /* A new residue, or a window past every candidate: start afresh at its first position. */
        if (r != residue || next < a) {
            residue = r;
            head = tail = 0;
            next = a;
        }
        for (; next <= b; next += dil) {
            const PT v = indirect ? plane[next * width + rcol_in[next * out_w]] : line[next];
            while (tail > head && ((v > dq_val[tail - 1]) | (v != v))) tail--;
            dq_pos[tail] = next;
            dq_val[tail] = v;
            tail++;
        }
        while (dq_pos[head] < a) head++;
        const ptrdiff_t t = (ptrdiff_t)dq_pos[head];
        if (!indirect) {
            rcol_out[o] = (int32_t)t;
        } else {
            out[o * out_w] = dq_val[head];
            if (indices != NULL) indices[o * out_w] = (int64_t)t * width + rcol_in[t * out_w];
        }
    }
}

/* Windows of dilation 1 by blocks (van Herk / Gil-Werman), without branches on the data: the line
 * in blocks of `kernel` positions, the winner of each block's prefixes and of its suffixes (by the
 * same rule: a later position wins if NaN or strictly greater), and each window (at most `kernel`
 * long, so within two blocks) the suffix of its first block followed by the prefix of its second.
 * A window inside one block is clipped by the input: it starts its block (a prefix) or ends the
 * line (a suffix). win: the outputs' first positions a, then their last b, then their kind (0: the
 * prefix to b, 1: the suffix from a, 2: both), from convx.functional's caller (no divisions here).
 *
 * Row pass of one input row: rcol[o] = the winning column of output column o. pre_*, suf_*: width
 * entries each. */
CONVX_POOL_INLINE void CONVX_POOL(convx_max_row_blocks)(const PT *CONVX_RESTRICT line, ptrdiff_t size,
                                                        ptrdiff_t kernel, ptrdiff_t last_phase, ptrdiff_t outputs,
                                                        const int64_t *CONVX_RESTRICT win, PT *CONVX_RESTRICT pre_val,
                                                        int32_t *CONVX_RESTRICT pre_pos, PT *CONVX_RESTRICT suf_val,
                                                        int32_t *CONVX_RESTRICT suf_pos, int32_t *CONVX_RESTRICT rcol) {
    PT best = 0;
    int32_t at = 0;
    ptrdiff_t t, left = 0;
    for (t = 0; t < size; t++) {
        const PT v = line[t];
        const int take = (left == 0) | (v > best) | (v != v);
        left = left == 0 ? kernel - 1 : left - 1;
        best = take ? v : best;
        at = take ? (int32_t)t : at;
        pre_val[t] = best;
        pre_pos[t] = at;
    }
    /* c = t % kernel (last_phase = (size - 1) % kernel): a suffix restarts where a block (or the line) ends. */
    ptrdiff_t c = last_phase;
    for (t = size - 1; t >= 0; t--) {
        const PT v = line[t];
        const int keep = (t != size - 1) & (c != kernel - 1) & ((best > v) | (best != best));
        best = keep ? best : v;
        at = keep ? at : (int32_t)t;
        suf_val[t] = best;
        suf_pos[t] = at;
        c = c == 0 ? kernel - 1 : c - 1;
    }
    const int64_t *CONVX_RESTRICT first = win, *CONVX_RESTRICT last = win + outputs;
    const int64_t *CONVX_RESTRICT kind = win + 2 * outputs;
    for (ptrdiff_t o = 0; o < outputs; o++) {
        const ptrdiff_t a = (ptrdiff_t)first[o], b = (ptrdiff_t)last[o];
        const int later = kind[o] == 0 || (kind[o] == 2 && ((pre_val[b] > suf_val[a]) | (pre_val[b] != pre_val[b])));
        rcol[o] = later ? pre_pos[b] : suf_pos[a];
    }
}

/* Column pass by blocks (see convx_max_row_blocks) for the output columns [ow0, ow0 + n): the rows
 * of the row winners are combined for all n columns at once, each step one unit-stride loop across
 * the columns. pre_*, suf_*: height * n entries each (row h at h * n). */
CONVX_POOL_INLINE void CONVX_POOL(convx_max_column_blocks)(const PT *CONVX_RESTRICT plane, ptrdiff_t width,
                                                           ptrdiff_t height, const int32_t *CONVX_RESTRICT rcol,
                                                           ptrdiff_t out_w, ptrdiff_t ow0, ptrdiff_t n,
                                                           ptrdiff_t kernel, ptrdiff_t out_h,
                                                           const int64_t *CONVX_RESTRICT win,
                                                           PT *CONVX_RESTRICT pre_val,
                                                           int32_t *CONVX_RESTRICT pre_row, PT *CONVX_RESTRICT suf_val,
                                                           int32_t *CONVX_RESTRICT suf_row, PT *CONVX_RESTRICT out,
                                                           int64_t *CONVX_RESTRICT indices) {
    ptrdiff_t h, c, left = 0;
    for (h = 0; h < height; h++) {
        const int32_t *CONVX_RESTRICT cols = rcol + h * out_w + ow0;
        const PT *CONVX_RESTRICT row = plane + h * width;
        PT *CONVX_RESTRICT pv = pre_val + h * n, *CONVX_RESTRICT sv = suf_val + h * n;
        int32_t *CONVX_RESTRICT pr = pre_row + h * n;
        if (left == 0) {
            for (c = 0; c < n; c++) {
                const PT v = row[cols[c]];
                pv[c] = v;
                pr[c] = (int32_t)h;
                sv[c] = v;
            }
            left = kernel;
        } else {
            const PT *CONVX_RESTRICT pv_up = pv - n;
            const int32_t *CONVX_RESTRICT pr_up = pr - n;
            CONVX_SIMD for (c = 0; c < n; c++) {
                const PT v = row[cols[c]];
                const int take = (v > pv_up[c]) | (v != v);
                pv[c] = take ? v : pv_up[c];
                pr[c] = take ? (int32_t)h : pr_up[c];
                sv[c] = v;
            }
        }
        left--;
    }
    ptrdiff_t q = (height - 1) % kernel;
    for (h = height - 1; h >= 0; h--) {
        PT *CONVX_RESTRICT sv = suf_val + h * n;
        int32_t *CONVX_RESTRICT sr = suf_row + h * n;
        if (h == height - 1 || q == kernel - 1) {
            for (c = 0; c < n; c++) sr[c] = (int32_t)h;
        } else {
            const PT *CONVX_RESTRICT sv_down = sv + n;
            const int32_t *CONVX_RESTRICT sr_down = sr + n;
            CONVX_SIMD for (c = 0; c < n; c++) {
                const PT v = sv[c], below = sv_down[c];
                const int keep = (below > v) | (below != below);
                sv[c] = keep ? below : v;
                sr[c] = keep ? sr_down[c] : (int32_t)h;
            }
        }
        q = q == 0 ? kernel - 1 : q - 1;
    }
    const int64_t *CONVX_RESTRICT first = win, *CONVX_RESTRICT last = win + out_h;
    const int64_t *CONVX_RESTRICT kind = win + 2 * out_h;
    for (ptrdiff_t o = 0; o < out_h; o++) {
        const ptrdiff_t a = (ptrdiff_t)first[o], b = (ptrdiff_t)last[o];
        const PT *CONVX_RESTRICT pv = pre_val + b * n, *CONVX_RESTRICT sv = suf_val + a * n;
        const int32_t *CONVX_RESTRICT pr = pre_row + b * n, *CONVX_RESTRICT sr = suf_row + a * n;
        PT *CONVX_RESTRICT dst = out + o * out_w + ow0;
        int64_t *CONVX_RESTRICT where = indices != NULL ? indices + o * out_w + ow0 : NULL;
        const int64_t k = kind[o];
        CONVX_SIMD for (c = 0; c < n; c++) {
            const int later = k == 0 || (k == 2 && ((pv[c] > sv[c]) | (pv[c] != pv[c])));
            dst[c] = later ? pv[c] : sv[c];
        }
        if (where == NULL) continue;
        for (c = 0; c < n; c++) {
            const int later = k == 0 || (k == 2 && ((pv[c] > sv[c]) | (pv[c] != pv[c])));
            const ptrdiff_t r = later ? pr[c] : sr[c];
            where[c] = (int64_t)r * width + rcol[r * out_w + ow0 + c];
        }
    }
}

/* out[oh, ow] = the maximum of the window's taps inside the input (NaN wins, the last NaN; else the
 * first maximum in row-major window order), indices[oh, ow] = its flat index (indices may be NULL),
 * in time linear in the plane and the output, whatever the kernel, stride, padding and dilation:
 * a row pass finds, for every input row and output column, the winner among that row's taps
 * (the first maximum or last NaN in column order), then a column pass combines the rows of each
 * window in row order by the same rule, which is the row-major rule on the whole window.
 * Along an axis of dilation 1 the passes go by blocks (row_win, col_win: convx_max_row_blocks's
 * `win`; the column pass `chunk` output columns at a time, 0 for one at a time by deque), else by
 * deque (row_order, col_order: convx_max_line's `order`; NULL where a win is given or the dilation
 * is 1). scratch (bytes, 8-aligned): the larger of the row pass's (blocks: width * (2 PT + 2 int32),
 * deque: width * (int64 + PT)) and the column pass's (blocks: height * chunk * (2 PT + 2 int32),
 * deque: height * (int64 + PT)); rcol: height * out_w int32 (width < 2^31). */
CONVX_CLONES static void CONVX_POOL(convx_max_pool_separable)(const PT *CONVX_RESTRICT plane, PT *CONVX_RESTRICT out,
                                                              int64_t *CONVX_RESTRICT indices,
                                                              PT *CONVX_RESTRICT scratch, int32_t *CONVX_RESTRICT rcol,
                                                              const convx_pool_geometry *g,
                                                              const int64_t *row_order, const int64_t *col_order,
                                                              const int64_t *row_win, const int64_t *col_win,
                                                              ptrdiff_t chunk) {
    const ptrdiff_t height = g->height, width = g->width, out_h = g->out_h, out_w = g->out_w;
    /* The deques' positions first (int64), then their values: PT-sized slots hold no int64 for float. */
    int64_t *dq_pos = (int64_t *)(void *)scratch;
    if (col_win != NULL) {
        PT *pre_val = scratch, *suf_val = pre_val + width;
        int32_t *pre_pos = CONVX_POOL_INT32_AFTER(suf_val, width), *suf_pos = pre_pos + width;
        const ptrdiff_t last_phase = (width - 1) % g->kernel_w;
        for (ptrdiff_t h = 0; h < height; h++)
            CONVX_POOL(convx_max_row_blocks)(plane + h * width, width, g->kernel_w, last_phase, out_w, col_win,
                                             pre_val, pre_pos, suf_val, suf_pos, rcol + h * out_w);
    } else {
        for (ptrdiff_t h = 0; h < height; h++)
            CONVX_POOL(convx_max_line)(plane + h * width, plane, width, NULL, out_w, 0, out_w, g->stride_w,
                                       g->pad_w, g->dilation_w, g->col_lo, g->col_hi, col_order, dq_pos,
                                       (PT *)(void *)(dq_pos + width), rcol + h * out_w, NULL, NULL);
    }
    if (row_win != NULL && chunk > 0) {
        PT *pre_val = scratch, *suf_val = pre_val + height * chunk;
        int32_t *pre_row = CONVX_POOL_INT32_AFTER(suf_val, height * chunk), *suf_row = pre_row + height * chunk;
        for (ptrdiff_t ow0 = 0; ow0 < out_w; ow0 += chunk)
            CONVX_POOL(convx_max_column_blocks)(plane, width, height, rcol, out_w, ow0,
                                                out_w - ow0 < chunk ? out_w - ow0 : chunk, g->kernel_h, out_h,
                                                row_win, pre_val, pre_row, suf_val, suf_row, out, indices);
    } else {
        for (ptrdiff_t ow = 0; ow < out_w; ow++)
            CONVX_POOL(convx_max_line)(NULL, plane, width, rcol + ow, out_w, 1, out_h, g->stride_h, g->pad_h,
                                       g->dilation_h, g->row_lo, g->row_hi, row_order, dq_pos,
                                       (PT *)(void *)(dq_pos + height), NULL, out + ow,
                                       indices != NULL ? indices + ow : NULL);
    }
}
