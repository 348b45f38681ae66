/* The channels-last direct convolution for one element type and one instruction set, included by
 * _gemm_body.h with its parameters (GT, GV, GVL, GMR, GNV, GNR, GLOAD, GSTORE, GFMA, GSET1,
 * GZERO, GTARGET and, with AVX-512, GTRANSPOSE).
 *
 * The forward as a product with the roles of the GEMM path swapped: a register tile holds GMR
 * output pixels (or one pixel of GMR images) by GNR output channels. Each step of its depth
 * loads GNR channels of one (input channel, tap) row of the packed weight and broadcasts the
 * input value of each of its GMR pixels, read straight from a channels-last copy of the input:
 * for one tap the depth runs along the channels, contiguous there, so nothing is packed per
 * tile, and taps that fall in the padding for a whole tile (rows above and below the plane, or
 * every tap off the plane in batch tiles) are skipped rather than multiplied by zero. The tile
 * takes the whole depth (channels x taps) in registers and is written once, through the
 * activation of the forward's epilogue where there is one.
 */

/* Elements of one group's packed weight: ceil(m / GNR) blocks of k rows of GNR lanes. */
static size_t GN(convx_direct_weight_size)(ptrdiff_t m, ptrdiff_t k) {
    return (size_t)((m + GNR - 1) / GNR) * (size_t)k * GNR;
}

/* Output channels of one block of the packed weight (its lanes). */
static ptrdiff_t GN(convx_direct_lanes)(void) { return GNR; }

/* Pixels (or images) of one register tile. */
static ptrdiff_t GN(convx_direct_rows)(void) { return GMR; }

/* Block blk of one group's packed weight: packed[(t * channels + c) * GNR + l] = the weight of
 * output lane co = blk * GNR + l, input channel c and tap t, w[co * s_m + c * s_c + t * s_t]
 * (0 for the lanes past m). The strides let the input gradient pack W^T with its taps reversed.
 * Returns whether every weight is finite (the direct kernels skip the taps in the padding, which
 * only a non-finite weight can tell from multiplying them by its zeros). */
GTARGET static int GN(convx_direct_pack_weight)(const GT *CONVX_RESTRICT w, ptrdiff_t m, ptrdiff_t channels,
                                                ptrdiff_t taps, ptrdiff_t s_m, ptrdiff_t s_c, ptrdiff_t s_t,
                                                ptrdiff_t blk, GT *CONVX_RESTRICT packed) {
    /* (one sum of v * 0 per lane, so that no chain of dependent adds runs through the loop) */
    GT zero[GNR];
    const ptrdiff_t lanes = m - blk * GNR < GNR ? m - blk * GNR : GNR;
    const GT *src = w + blk * GNR * s_m;
    ptrdiff_t c0 = 0;
    for (ptrdiff_t l = 0; l < GNR; l++) zero[l] = 0;
#ifdef GTRANSPOSE
    /* The forward's layout (the weight's rows, tap fastest): a row's elements are read a cache
     * line at a time by blocks of GVL x GVL transposes, as the element-wise loop below reads
     * GNR rows a whole weight row apart, which map to the same few L1 sets. */
    if (s_t == 1 && s_c == taps && lanes == GNR) {
        const ptrdiff_t k = channels * taps, k_blocked = k / GVL * GVL;
        GT block[GVL * GVL];
        GV z = GZERO();
        for (ptrdiff_t j0 = 0; j0 < k_blocked; j0 += GVL)
            for (ptrdiff_t l0 = 0; l0 < GNR; l0 += GVL) {
                GTRANSPOSE(src + l0 * s_m + j0, s_m, block, GVL);
                for (ptrdiff_t jj = 0; jj < GVL; jj++) {
                    const ptrdiff_t c = (j0 + jj) / taps, t = (j0 + jj) % taps;
                    const GV v = GLOAD(block + jj * GVL);
                    GSTORE(packed + (t * channels + c) * GNR + l0, v);
                    z = GFMA(v, GZERO(), z);
                }
            }
        GSTORE(zero, z);
        for (ptrdiff_t j = k_blocked; j < k; j++)
            for (ptrdiff_t l = 0; l < GNR; l++) {
                const GT v = src[l * s_m + j];
                packed[(j % taps * channels + j / taps) * GNR + l] = v;
                zero[l] += v * (GT)0;
            }
        c0 = channels;
    }
#endif
    for (ptrdiff_t c = c0; c < channels; c++)
        for (ptrdiff_t t = 0; t < taps; t++) {
            GT *dst = packed + (t * channels + c) * GNR;
            const GT *at = src + c * s_c + t * s_t;
            for (ptrdiff_t l = 0; l < lanes; l++) {
                const GT v = at[l * s_m];
                dst[l] = v;
                zero[l] += v * (GT)0;
            }
            for (ptrdiff_t l = lanes; l < GNR; l++) dst[l] = 0;
        }
    int finite = 1;
    for (ptrdiff_t l = 0; l < GNR; l++) finite &= zero[l] == 0;
    return finite;
}

/* dst[iw * ld + c] = src[c * plane + iw] for c < channels, iw < width: one input row, channels
 * last. */
GTARGET static void GN(convx_direct_row_nhwc)(const GT *CONVX_RESTRICT src, ptrdiff_t plane, ptrdiff_t channels,
                                              ptrdiff_t width, GT *CONVX_RESTRICT dst, ptrdiff_t ld) {
    ptrdiff_t c0 = 0;
#ifdef GTRANSPOSE
    for (; c0 + GVL <= channels; c0 += GVL) {
        ptrdiff_t iw = 0;
        for (; iw + GVL <= width; iw += GVL) GTRANSPOSE(src + c0 * plane + iw, plane, dst + iw * ld + c0, ld);
        for (; iw < width; iw++)
            for (ptrdiff_t c = c0; c < c0 + GVL; c++) dst[iw * ld + c] = src[c * plane + iw];
    }
#endif
    for (ptrdiff_t c = c0; c < channels; c++)
        for (ptrdiff_t iw = 0; iw < width; iw++) dst[iw * ld + c] = src[c * plane + iw];
}

/* One input row channels last in a buffer row of wb columns: pw zero columns, the row's width
 * columns (convx_direct_row_nhwc), zero columns to wb. */
GTARGET static void GN(convx_direct_padded_row)(const GT *CONVX_RESTRICT src, ptrdiff_t plane, ptrdiff_t channels,
                                                ptrdiff_t width, ptrdiff_t pw, ptrdiff_t wb, GT *CONVX_RESTRICT row) {
    memset(row, 0, (size_t)(pw * channels) * sizeof(GT));
    GN(convx_direct_row_nhwc)(src, plane, channels, width, row + pw * channels, channels);
    memset(row + (pw + width) * channels, 0, (size_t)((wb - pw - width) * channels) * sizeof(GT));
}

/* One input row channels last in a buffer row of wb columns, from a channels-last input (src its
 * width * channels elements): as convx_direct_padded_row. */
static void GN(convx_direct_padded_row_last)(const GT *CONVX_RESTRICT src, ptrdiff_t channels, ptrdiff_t width,
                                             ptrdiff_t pw, ptrdiff_t wb, GT *CONVX_RESTRICT row) {
    memset(row, 0, (size_t)(pw * channels) * sizeof(GT));
    memcpy(row + pw * channels, src, (size_t)(width * channels) * sizeof(GT));
    memset(row + (pw + width) * channels, 0, (size_t)((wb - pw - width) * channels) * sizeof(GT));
}

/* out[r * ors + l * ocs] = act((bias ? bias[l] : 0) + sum over the taps t and channels c of
 * a[r * ars + aoff[t] + c] * b[boff[t] + c * GNR + l]), for r < rows, l < lanes, act the
 * activation of epi (none where epi is NULL); the register tile has mr <= GMR rows (a constant
 * where it is inlined). */
GTARGET static inline __attribute__((always_inline)) void GN(convx_direct_tile_body)(
    const int mr, const GT *CONVX_RESTRICT a, ptrdiff_t ars, const ptrdiff_t *aoff, const ptrdiff_t *boff,
    ptrdiff_t taps, ptrdiff_t channels, const GT *CONVX_RESTRICT b, const GT *CONVX_RESTRICT bias,
    const convx_epilogue *epi, GT *CONVX_RESTRICT out, ptrdiff_t ors, ptrdiff_t ocs, ptrdiff_t rows,
    ptrdiff_t lanes) {
    GV acc[GMR][GNV];
    for (int v = 0; v < GNV; v++) {
        const GV start = bias ? GLOAD(bias + v * GVL) : GZERO();
        for (int r = 0; r < mr; r++) acc[r][v] = start;
    }
    for (ptrdiff_t t = 0; t < taps; t++) {
        const GT *pa = a + aoff[t];
        const GT *pb = b + boff[t];
        CONVX_UNROLL(4)
        for (ptrdiff_t c = 0; c < channels; c++) {
            GV bv[GNV];
            for (int v = 0; v < GNV; v++) bv[v] = GLOAD(pb + v * GVL);
            for (int r = 0; r < mr; r++) {
                const GV av = GSET1(pa[r * ars]);
                for (int v = 0; v < GNV; v++) acc[r][v] = GFMA(av, bv[v], acc[r][v]);
            }
            pa++;
            pb += GNR;
        }
    }
    GT tile[GMR * GNR];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < GNV; v++) GSTORE(tile + r * GNR + v * GVL, acc[r][v]);
    if (epi) GACT(epi->kind, tile, tile, mr * GNR, epi->p0, epi->p1);
    if (ocs == 1) {
        /* channels last: each pixel's lanes are contiguous */
        for (ptrdiff_t r = 0; r < rows; r++) memcpy(out + r * ors, tile + r * GNR, (size_t)lanes * sizeof(GT));
        return;
    }
#ifdef GCOLUMN8
    /* A full tile along an output row: each lane's 8 pixels are contiguous there. */
    if (mr == 8 && rows == 8 && ors == 1) {
        for (ptrdiff_t l = 0; l < lanes; l++) GCOLUMN8(out + l * ocs, tile + l);
        return;
    }
#endif
    for (ptrdiff_t l = 0; l < lanes; l++)
        for (ptrdiff_t r = 0; r < rows; r++) out[r * ors + l * ocs] = tile[r * GNR + l];
}

GTARGET static void GN(convx_direct_tile)(const GT *CONVX_RESTRICT a, ptrdiff_t ars, const ptrdiff_t *aoff,
                                          const ptrdiff_t *boff, ptrdiff_t taps, ptrdiff_t channels,
                                          const GT *CONVX_RESTRICT b, const GT *CONVX_RESTRICT bias,
                                          const convx_epilogue *epi, GT *CONVX_RESTRICT out, ptrdiff_t ors,
                                          ptrdiff_t ocs, ptrdiff_t rows, ptrdiff_t lanes) {
    GN(convx_direct_tile_body)(GMR, a, ars, aoff, boff, taps, channels, b, bias, epi, out, ors, ocs, rows, lanes);
}

/* The tile of exactly rows <= GMR rows: a row's last tile computes only the pixels it stores (on
 * AVX2's tiles of 6, a 56-pixel row is 9 tiles and one of 2, not 10 of 6). */
GTARGET static void GN(convx_direct_tile_exact)(const GT *CONVX_RESTRICT a, ptrdiff_t ars, const ptrdiff_t *aoff,
                                                const ptrdiff_t *boff, ptrdiff_t taps, ptrdiff_t channels,
                                                const GT *CONVX_RESTRICT b, const GT *CONVX_RESTRICT bias,
                                                const convx_epilogue *epi, GT *CONVX_RESTRICT out, ptrdiff_t ors,
                                                ptrdiff_t ocs, ptrdiff_t rows, ptrdiff_t lanes) {
#define CONVX_TILE_ROWS(MR)                                                                               \
    case MR:                                                                                              \
        GN(convx_direct_tile_body)(MR, a, ars, aoff, boff, taps, channels, b, bias, epi, out, ors, ocs, rows, \
                                   lanes);                                                                \
        return;
    switch (rows) {
        CONVX_TILE_ROWS(1)
        CONVX_TILE_ROWS(2)
        CONVX_TILE_ROWS(3)
        CONVX_TILE_ROWS(4)
        CONVX_TILE_ROWS(5)
#if GMR > 6
        CONVX_TILE_ROWS(6)
#endif
#if GMR > 7
        CONVX_TILE_ROWS(7)
#endif
    default:
        GN(convx_direct_tile_body)(GMR, a, ars, aoff, boff, taps, channels, b, bias, epi, out, ors, ocs, rows,
                                   lanes);
    }
#undef CONVX_TILE_ROWS
}

/* A 3-D convolution's output rows [r0, r1) of its output depth slices [od0, od1), one image, by
 * convx_direct_tile with the kd depth taps among the taps. s is the 2-D shape of one depth slice
 * (its o_cs, x_last and out_last say the layouts: channels first with x's channel step
 * depth * height * width, or channels last), d the depth axis, packed each group's weight packed
 * with kd * kh * kw taps, out_slice the step from one output depth slice to the next; x points at
 * the image, out at its output slice od0. buf holds kd slots of convx_direct_buffer_size(s, GMR, r1 - r0) elements:
 * the input rows [ih0, ih1) of one input depth slice each, channels last, and a slot keeps its
 * slice from one output slice to the next, so that a run of output slices copies each input
 * slice's rows once. */
GTARGET static void GN(convx_direct_conv3d_rows)(const convx_conv_shape *s, const convx_depth_axis *d,
                                                 const GT *CONVX_RESTRICT packed, size_t group_size,
                                                 const GT *CONVX_RESTRICT bias, const convx_epilogue *epi,
                                                 const GT *CONVX_RESTRICT x, GT *CONVX_RESTRICT out,
                                                 ptrdiff_t out_slice, ptrdiff_t od0, ptrdiff_t od1, ptrdiff_t r0,
                                                 ptrdiff_t r1, GT *CONVX_RESTRICT buf) {
    const ptrdiff_t channels = s->groups * s->c_in_g, plane = s->height * s->width;
    const ptrdiff_t wb = convx_direct_buffer_width(s, GMR), tile = convx_direct_row_tile(s, GMR);
    const ptrdiff_t blocks = (s->c_out_g + GNR - 1) / GNR, taps2 = s->kh * s->kw;
    const ptrdiff_t k = s->c_in_g * d->kd * taps2;
    const ptrdiff_t slot_size = (ptrdiff_t)convx_direct_buffer_size(s, GMR, r1 - r0);
    ptrdiff_t ih0 = r0 * s->sh - s->ph, ih1 = (r1 - 1) * s->sh - s->ph + (s->kh - 1) * s->dh + 1;
    if (ih0 < 0) ih0 = 0;
    if (ih1 > s->height) ih1 = s->height;
    const ptrdiff_t o_ch = convx_out_channel(s), o_px = convx_out_px(s), o_row = convx_out_row(s);
    /* Undilated and ungrouped, a kernel row's taps read kw * c_in consecutive elements of a buffer
     * row and of the packed weight: one run of the tile's depth loop (3x3 from 3 channels: 3 runs
     * of 9, not 9 of 3). */
    const ptrdiff_t row_taps = s->dw == 1 && s->groups == 1 ? s->kw : 1;
    ptrdiff_t held[CONVX_DIRECT3D_DEPTH_TAPS], slot_of[CONVX_DIRECT3D_DEPTH_TAPS];
    ptrdiff_t aoff[CONVX_DIRECT3D_TAPS], boff[CONVX_DIRECT3D_TAPS];
    for (ptrdiff_t a = 0; a < d->kd; a++) held[a] = -1;
    for (ptrdiff_t od = od0; od < od1; od++) {
        const ptrdiff_t first = od * d->sd - d->pd;
        /* each depth tap's slot: the one holding its input slice, else one no tap of od needs */
        for (ptrdiff_t a = 0; a < d->kd; a++) {
            const ptrdiff_t id = first + a * d->dd;
            slot_of[a] = -1;
            if (id < d->lo || id >= d->hi) continue;
            for (ptrdiff_t q = 0; q < d->kd; q++)
                if (held[q] == id) slot_of[a] = q;
        }
        for (ptrdiff_t a = 0; a < d->kd; a++) {
            const ptrdiff_t id = first + a * d->dd;
            if (id < d->lo || id >= d->hi || slot_of[a] >= 0) continue;
            for (ptrdiff_t q = 0; q < d->kd && slot_of[a] < 0; q++) {
                int needed = 0;
                for (ptrdiff_t b = 0; b < d->kd; b++) needed |= slot_of[b] == q;
                if (!needed) slot_of[a] = q;
            }
            held[slot_of[a]] = id;
            GT *slot = buf + slot_of[a] * slot_size;
            for (ptrdiff_t ih = ih0; ih < ih1; ih++) {
                if (s->x_last)
                    GN(convx_direct_padded_row_last)(x + ((id * s->height + ih) * s->width) * channels, channels,
                                                     s->width, s->pw, wb, slot + (ih - ih0) * wb * channels);
                else
                    GN(convx_direct_padded_row)(x + id * plane + ih * s->width, d->depth * plane, channels, s->width,
                                                s->pw, wb, slot + (ih - ih0) * wb * channels);
            }
        }
        for (ptrdiff_t grp = 0; grp < s->groups; grp++)
            for (ptrdiff_t blk = 0; blk < blocks; blk++) {
                const GT *b = packed + grp * group_size + blk * k * GNR;
                const GT *b_bias = bias ? bias + (grp * blocks + blk) * GNR : NULL;
                const ptrdiff_t co = grp * s->c_out_g + blk * GNR;
                const ptrdiff_t lanes = s->c_out_g - blk * GNR < GNR ? s->c_out_g - blk * GNR : GNR;
                for (ptrdiff_t oh = r0; oh < r1; oh++) {
                    ptrdiff_t taps = 0;
                    for (ptrdiff_t a = 0; a < d->kd; a++) {
                        if (slot_of[a] < 0) continue;
                        for (ptrdiff_t i = 0; i < s->kh; i++) {
                            const ptrdiff_t ih = oh * s->sh - s->ph + i * s->dh;
                            if (ih < 0 || ih >= s->height) continue;
                            for (ptrdiff_t j = 0; j < s->kw; j += row_taps, taps++) {
                                aoff[taps] = slot_of[a] * slot_size + ((ih - ih0) * wb + j * s->dw) * channels +
                                             grp * s->c_in_g;
                                boff[taps] = ((a * s->kh + i) * s->kw + j) * s->c_in_g * GNR;
                            }
                        }
                    }
                    for (ptrdiff_t ow = 0; ow < s->out_w; ow += tile) {
                        const ptrdiff_t rows = s->out_w - ow < tile ? s->out_w - ow : tile;
                        GN(convx_direct_tile_exact)(buf + ow * s->sw * channels, s->sw * channels, aoff, boff, taps,
                                                    row_taps * s->c_in_g, b, b_bias, epi,
                                                    out + (od - od0) * out_slice + co * o_ch + oh * o_row + ow * o_px, o_px,
                                                    o_ch, rows, lanes);
                    }
                }
            }
    }
}

/* Output rows [r0, r1) of one image, every group and output channel, by convx_direct_tile: x and
 * out point at the image, packed holds each group's weight (convx_direct_pack_weight, group_size
 * elements apart), bias (NULL or) each group's ceil(c_out_g / GNR) * GNR lanes, epi (NULL or)
 * the activation applied to each tile, buf convx_direct_buffer_size elements (the rows the output
 * rows read, channels last, with zero columns for the padding and the last tile's spare pixels).
 * Padding must not be negative. It is the 3-D kernel's single slot over a volume of one slice. */
GTARGET static void GN(convx_direct_conv_rows)(const convx_conv_shape *s, const GT *CONVX_RESTRICT packed,
                                               size_t group_size, const GT *CONVX_RESTRICT bias,
                                               const convx_epilogue *epi, const GT *CONVX_RESTRICT x,
                                               GT *CONVX_RESTRICT out, ptrdiff_t r0, ptrdiff_t r1,
                                               GT *CONVX_RESTRICT buf) {
    const convx_depth_axis one_slice = {1, 1, 1, 0, 1, 0, 1};
    GN(convx_direct_conv3d_rows)(s, &one_slice, packed, group_size, bias, epi, x, out, 0, 0, 1, r0, r1, buf);
}

/* Output channel blocks [blk0, blk1) (counted over all groups) of images [0, n_images) of
 * x and out, n_images <= GMR, one tile per output pixel with the images as its rows (epi as in
 * convx_direct_conv_rows); buf holds GMR channels-last planes, those past n_images initialised (they feed only rows not stored). */
GTARGET static void GN(convx_direct_conv_images)(const convx_conv_shape *s, const GT *CONVX_RESTRICT packed,
                                                 size_t group_size, const GT *CONVX_RESTRICT bias,
                                                 const convx_epilogue *epi, const GT *CONVX_RESTRICT x, GT *CONVX_RESTRICT out,
                                                 ptrdiff_t n_images, ptrdiff_t blk0, ptrdiff_t blk1,
                                                 GT *CONVX_RESTRICT buf) {
    const ptrdiff_t channels = s->groups * s->c_in_g, plane = s->height * s->width;
    const ptrdiff_t blocks = (s->c_out_g + GNR - 1) / GNR, k = s->c_in_g * s->kh * s->kw;
    const ptrdiff_t image = plane * channels;
    for (ptrdiff_t n = 0; n < n_images; n++) {
        if (s->x_last) {
            memcpy(buf + n * image, x + n * image, (size_t)image * sizeof(GT));
            continue;
        }
        for (ptrdiff_t ih = 0; ih < s->height; ih++)
            GN(convx_direct_row_nhwc)(x + n * image + ih * s->width, plane, channels, s->width,
                                      buf + n * image + ih * s->width * channels, channels);
    }
    const ptrdiff_t o_ch = convx_out_channel(s), o_px = convx_out_px(s), o_row = convx_out_row(s);
    ptrdiff_t aoff[CONVX_DIRECT_TAPS], boff[CONVX_DIRECT_TAPS];
    for (ptrdiff_t u = blk0; u < blk1; u++) {
        const ptrdiff_t grp = u / blocks, blk = u % blocks;
        const GT *b = packed + grp * group_size + blk * k * GNR;
        const GT *b_bias = bias ? bias + u * GNR : NULL;
        const ptrdiff_t co = grp * s->c_out_g + blk * GNR;
        const ptrdiff_t lanes = s->c_out_g - blk * GNR < GNR ? s->c_out_g - blk * GNR : GNR;
        for (ptrdiff_t oh = 0; oh < s->out_h; oh++)
            for (ptrdiff_t ow = 0; ow < s->out_w; ow++) {
                ptrdiff_t taps = 0;
                for (ptrdiff_t i = 0; i < s->kh; i++) {
                    const ptrdiff_t ih = oh * s->sh - s->ph + i * s->dh;
                    if (ih < 0 || ih >= s->height) continue;
                    for (ptrdiff_t j = 0; j < s->kw; j++) {
                        const ptrdiff_t iw = ow * s->sw - s->pw + j * s->dw;
                        if (iw < 0 || iw >= s->width) continue;
                        aoff[taps] = (ih * s->width + iw) * channels + grp * s->c_in_g;
                        boff[taps] = (i * s->kw + j) * s->c_in_g * GNR;
                        taps++;
                    }
                }
                GN(convx_direct_tile)(buf, image, aoff, boff, taps, s->c_in_g, b, b_bias, epi,
                                      out + co * o_ch + oh * o_row + ow * o_px, convx_out_image(s), o_ch, n_images,
                                      lanes);
            }
    }
}

/* part[r * GNR + l] += the sum over the segments u and their pixels p < len of
 * a[aoff[u] + roff[r] + p * astep] * b[boff[u] + p * bstep + l] for r < GMR. */
GTARGET static inline __attribute__((always_inline)) void GN(convx_direct_weight_tile_body)(
    const GT *CONVX_RESTRICT a, const ptrdiff_t *roff, ptrdiff_t astep, const ptrdiff_t *aoff, const ptrdiff_t *boff,
    ptrdiff_t segs, ptrdiff_t len, ptrdiff_t bstep, const GT *CONVX_RESTRICT b, GT *CONVX_RESTRICT part) {
    GV acc[GMR][GNV];
    for (int r = 0; r < GMR; r++)
        for (int v = 0; v < GNV; v++) acc[r][v] = GLOAD(part + r * GNR + v * GVL);
    for (ptrdiff_t u = 0; u < segs; u++) {
        const GT *ra[GMR];
        for (int r = 0; r < GMR; r++) ra[r] = a + aoff[u] + roff[r];
        const GT *pb = b + boff[u];
        CONVX_UNROLL(4)
        for (ptrdiff_t p = 0; p < len; p++) {
            GV bv[GNV];
            for (int v = 0; v < GNV; v++) bv[v] = GLOAD(pb + v * GVL);
            for (int r = 0; r < GMR; r++) {
                const GV av = GSET1(ra[r][p * astep]);
                for (int v = 0; v < GNV; v++) acc[r][v] = GFMA(av, bv[v], acc[r][v]);
            }
            pb += bstep;
        }
    }
    for (int r = 0; r < GMR; r++)
        for (int v = 0; v < GNV; v++) GSTORE(part + r * GNR + v * GVL, acc[r][v]);
}

/* The tile with rows r' * ars of a, r' = r for the first `rows` rows and 0 past them (rows that
 * are never stored), read at consecutive pixels. */
GTARGET static void GN(convx_direct_weight_tile)(const GT *CONVX_RESTRICT a, ptrdiff_t ars, ptrdiff_t rows,
                                                 const ptrdiff_t *aoff, const ptrdiff_t *boff, ptrdiff_t segs,
                                                 ptrdiff_t len, ptrdiff_t bstep, const GT *CONVX_RESTRICT b,
                                                 GT *CONVX_RESTRICT part) {
    ptrdiff_t roff[GMR];
    for (int r = 0; r < GMR; r++) roff[r] = (r < rows ? r : 0) * ars;
    GN(convx_direct_weight_tile_body)(a, roff, 1, aoff, boff, segs, len, bstep, b, part);
}

/* The tile with rows at any offsets roff[r], read every astep elements. */
GTARGET static void GN(convx_direct_weight_tile_strided)(const GT *CONVX_RESTRICT a, const ptrdiff_t *roff,
                                                         ptrdiff_t astep, const ptrdiff_t *aoff,
                                                         const ptrdiff_t *boff, ptrdiff_t segs, ptrdiff_t len,
                                                         ptrdiff_t bstep, const GT *CONVX_RESTRICT b,
                                                         GT *CONVX_RESTRICT part) {
    GN(convx_direct_weight_tile_body)(a, roff, astep, aoff, boff, segs, len, bstep, b, part);
}

/* Elements of the partial convx_direct_weight_images sums for tiles tiles of output channels. */
static size_t GN(convx_direct_weight_part_size)(const convx_conv_shape *s, ptrdiff_t tiles) {
    return (size_t)tiles * (size_t)(s->kh * s->kw) * (size_t)((s->c_in_g + GNR - 1) / GNR) * GMR * GNR;
}

/* Tiles of GMR output channels in one group. */
static ptrdiff_t GN(convx_direct_weight_tiles)(const convx_conv_shape *s) { return (s->c_out_g + GMR - 1) / GMR; }

/* Elements of one image of convx_direct_weight_images's buffer (channels last, every input row,
 * the padding's columns zero). */
static size_t GN(convx_direct_weight_image_size)(const convx_conv_shape *s) {
    return (size_t)s->height * (size_t)convx_direct_buffer_width(s, 1) * (size_t)(s->groups * s->c_in_g);
}

/* The weight gradient of tiles [u0, u1) (tile u: group u / tiles, output channels
 * GMR * (u % tiles) onwards) over images [0, n_images) of grad_out and x, added to part
 * (convx_direct_weight_part_size(s, u1 - u0) elements; tile, then tap, then block of GNR input
 * channels, then GMR x GNR); buf holds n_images convx_direct_weight_image_size images and GNR
 * elements more. Taps in the padding's rows are skipped, its columns multiplied as zeros. */
GTARGET static void GN(convx_direct_weight_images)(const convx_conv_shape *s, const GT *CONVX_RESTRICT grad_out,
                                                   const GT *CONVX_RESTRICT x, ptrdiff_t n_images, ptrdiff_t u0,
                                                   ptrdiff_t u1, GT *CONVX_RESTRICT part, GT *CONVX_RESTRICT buf) {
    const ptrdiff_t channels = s->groups * s->c_in_g, plane = s->height * s->width, n_out = s->out_h * s->out_w;
    const ptrdiff_t wb = convx_direct_buffer_width(s, 1), image = s->height * wb * channels;
    const ptrdiff_t image_out = s->groups * s->c_out_g * n_out, taps = s->kh * s->kw;
    const ptrdiff_t tiles = GN(convx_direct_weight_tiles)(s), blocks = (s->c_in_g + GNR - 1) / GNR;
    for (ptrdiff_t n = 0; n < n_images; n++)
        for (ptrdiff_t ih = 0; ih < s->height; ih++) {
            if (s->x_last)
                GN(convx_direct_padded_row_last)(x + (n * plane + ih * s->width) * channels, channels, s->width, s->pw,
                                                 wb, buf + n * image + ih * wb * channels);
            else
                GN(convx_direct_padded_row)(x + n * plane * channels + ih * s->width, plane, channels, s->width, s->pw,
                                            wb, buf + n * image + ih * wb * channels);
        }
    memset(buf + n_images * image, 0, GNR * sizeof(GT));
    /* grad_out (an output of the forward): where (co, oh, ow) is, and the step to the next pixel */
    const ptrdiff_t g_ch = s->out_last ? 1 : n_out, g_px = s->out_last ? s->groups * s->c_out_g : 1;
    ptrdiff_t per = CONVX_DIRECT_SEGS / n_images;
    if (s->out_last) {
        const ptrdiff_t row_bytes = (ptrdiff_t)(wb * channels * sizeof(GT)) * s->sh + s->out_w * 64;
        const ptrdiff_t band = CONVX_DIRECT_LAST_BAND_BYTES / (n_images * row_bytes);
        if (per > band) per = band;
    }
    if (per > s->out_h) per = s->out_h;
    if (per < 1) per = 1;
    ptrdiff_t aoff[CONVX_DIRECT_SEGS], boff[CONVX_DIRECT_SEGS];
    for (ptrdiff_t o0 = 0; o0 < s->out_h; o0 += per) {
        const ptrdiff_t o1 = o0 + per < s->out_h ? o0 + per : s->out_h;
        for (ptrdiff_t u = u0; u < u1; u++) {
            const ptrdiff_t grp = u / tiles, co = (u % tiles) * GMR;
            const ptrdiff_t rows = s->c_out_g - co < GMR ? s->c_out_g - co : GMR;
            const GT *a = grad_out + (grp * s->c_out_g + co) * g_ch;
            ptrdiff_t roff[GMR];
            for (int r = 0; r < GMR; r++) roff[r] = (r < rows ? r : 0) * g_ch;
            for (ptrdiff_t i = 0; i < s->kh; i++)
                for (ptrdiff_t j = 0; j < s->kw; j++) {
                    ptrdiff_t segs = 0;
                    for (ptrdiff_t n = 0; n < n_images; n++)
                        for (ptrdiff_t oh = o0; oh < o1; oh++) {
                            const ptrdiff_t ih = oh * s->sh - s->ph + i * s->dh;
                            if (ih < 0 || ih >= s->height) continue;
                            aoff[segs] = n * image_out + oh * s->out_w * g_px;
                            boff[segs] = n * image + (ih * wb + j * s->dw) * channels;
                            segs++;
                        }
                    if (!segs) continue;
                    for (ptrdiff_t blk = 0; blk < blocks; blk++) {
                        GT *tile_part = part + (((u - u0) * taps + i * s->kw + j) * blocks + blk) * GMR * GNR;
                        if (s->out_last)
                            GN(convx_direct_weight_tile_strided)(a, roff, g_px, aoff, boff, segs, s->out_w,
                                                                 s->sw * channels, buf + grp * s->c_in_g + blk * GNR,
                                                                 tile_part);
                        else
                            GN(convx_direct_weight_tile)(a, n_out, rows, aoff, boff, segs, s->out_w, s->sw * channels,
                                                         buf + grp * s->c_in_g + blk * GNR, tile_part);
                    }
                }
        }
    }
}

/* grad_weight's rows of tiles [u0, u1) from their partial (convx_direct_weight_images); returns
 * whether all of them are finite. */
static int GN(convx_direct_weight_store)(const convx_conv_shape *s, const GT *CONVX_RESTRICT part, ptrdiff_t u0,
                                         ptrdiff_t u1, GT *CONVX_RESTRICT grad_weight) {
    const ptrdiff_t taps = s->kh * s->kw, tiles = GN(convx_direct_weight_tiles)(s);
    const ptrdiff_t blocks = (s->c_in_g + GNR - 1) / GNR;
    GT zero[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (ptrdiff_t u = u0; u < u1; u++) {
        const ptrdiff_t grp = u / tiles, co0 = (u % tiles) * GMR;
        for (ptrdiff_t r = 0; r < GMR && co0 + r < s->c_out_g; r++) {
            GT *dst = grad_weight + (grp * s->c_out_g + co0 + r) * s->c_in_g * taps;
            for (ptrdiff_t ci = 0; ci < s->c_in_g; ci++)
                for (ptrdiff_t t = 0; t < taps; t++) {
                    const GT v = part[(((u - u0) * taps + t) * blocks + ci / GNR) * GMR * GNR + r * GNR + ci % GNR];
                    dst[ci * taps + t] = v;
                    zero[(ci * taps + t) & 7] += v * (GT)0;
                }
        }
    }
    int finite = 1;
    for (int q = 0; q < 8; q++) finite &= zero[q] == 0;
    return finite;
}

/* The weight gradient the other way round (convx_direct_weight_outer3d below; a 2-D image is a
 * volume of one-row slices to it), for layers with few input channels per group: tiles of GMR
 * rows k = ci * taps + t of the gradient by GNR output channels, the input broadcast from a
 * zero-padded copy of its rows (every product of im2col, the padding's zeros included) and
 * grad_out read channels last. The partial has convx_direct_outer_part_size elements: group,
 * row tile, block of GNR output channels, then GMR x GNR. */
static size_t GN(convx_direct_outer_part_size)(const convx_conv_shape *s) {
    const ptrdiff_t k = s->c_in_g * s->kh * s->kw;
    return (size_t)(s->groups * ((k + GMR - 1) / GMR) * ((s->c_out_g + GNR - 1) / GNR)) * GMR * GNR;
}

/* The outer weight gradient of a 3-D convolution: the output slices [od0, od1) of one image (x and
 * grad_out point at it; channels first, or channels last where s says so) added to part, whose rows
 * k = ci * taps + t run over kd * kh * kw taps, t = (a * kh + i) * kw + j (part as
 * convx_direct_outer_part_size for s with kh replaced by kd * kh). buf holds
 * convx_direct_outer3d_buffer_size(s, d, od1 - od0) elements: the input slices the band reads,
 * zero-padded, and the band's grad_out channels last. */
static size_t GN(convx_direct_outer3d_buffer_size)(const convx_conv_shape *s, const convx_depth_axis *d,
                                                   ptrdiff_t slices) {
    const ptrdiff_t hp = convx_padded_height(s), wp = convx_padded_width(s);
    const ptrdiff_t span = (slices - 1) * d->sd + (d->kd - 1) * d->dd + 1;
    return (size_t)(s->groups * s->c_in_g * span * hp * wp) +
           (size_t)(slices * s->out_h * s->out_w * s->groups * s->c_out_g) + GNR;
}

GTARGET static void GN(convx_direct_weight_outer3d)(const convx_conv_shape *s, const convx_depth_axis *d,
                                                    const GT *CONVX_RESTRICT grad_out, const GT *CONVX_RESTRICT x,
                                                    ptrdiff_t out_d, ptrdiff_t od0, ptrdiff_t od1,
                                                    GT *CONVX_RESTRICT part, GT *CONVX_RESTRICT buf) {
    const ptrdiff_t channels = s->groups * s->c_in_g, c_out = s->groups * s->c_out_g, taps2 = s->kh * s->kw;
    const ptrdiff_t taps = d->kd * taps2, hp = convx_padded_height(s), wp = convx_padded_width(s);
    const ptrdiff_t n_out = s->out_h * s->out_w, slices = od1 - od0;
    const ptrdiff_t span = (slices - 1) * d->sd + (d->kd - 1) * d->dd + 1, first = od0 * d->sd - d->pd;
    const ptrdiff_t k = s->c_in_g * taps, row_tiles = (k + GMR - 1) / GMR, blocks = (s->c_out_g + GNR - 1) / GNR;
    GT *xp = buf, *go = buf + channels * span * hp * wp;
    ptrdiff_t aoff[CONVX_DIRECT_SEGS], boff[CONVX_DIRECT_SEGS], roff[GMR];
    memset(go + slices * n_out * c_out, 0, GNR * sizeof(GT));
    memset(xp, 0, (size_t)(channels * span * hp * wp) * sizeof(GT));
    for (ptrdiff_t z = 0; z < span; z++) {
        const ptrdiff_t id = first + z;
        if (id < 0 || id >= d->depth) continue;
        for (ptrdiff_t c = 0; c < channels; c++)
            for (ptrdiff_t ih = 0; ih < s->height; ih++) {
                GT *row = xp + ((c * span + z) * hp + ih + s->ph) * wp + s->pw;
                if (s->x_last) {
                    const GT *src = x + ((id * s->height + ih) * s->width) * channels + c;
                    for (ptrdiff_t iw = 0; iw < s->width; iw++) row[iw] = src[iw * channels];
                } else {
                    memcpy(row, x + ((c * d->depth + id) * s->height + ih) * s->width, (size_t)s->width * sizeof(GT));
                }
            }
    }
    if (s->out_last)
        memcpy(go, grad_out + od0 * n_out * c_out, (size_t)(slices * n_out * c_out) * sizeof(GT));
    else
        for (ptrdiff_t row = 0; row < slices * s->out_h; row++)
            GN(convx_direct_row_nhwc)(grad_out + (od0 * s->out_h + row) * s->out_w, out_d * n_out, c_out, s->out_w,
                                      go + row * s->out_w * c_out, c_out);
    /* runs of output rows whose grad_out fits in L2 beside the input rows, as every row tile reads them */
    ptrdiff_t run = CONVX_DIRECT_LAST_BAND_BYTES / (ptrdiff_t)((size_t)(s->out_w * c_out) * sizeof(GT));
    if (run < 1) run = 1;
    if (run > CONVX_DIRECT_SEGS) run = CONVX_DIRECT_SEGS;
    for (ptrdiff_t o0 = 0; o0 < slices * s->out_h; o0 += run) {
        const ptrdiff_t segs = slices * s->out_h - o0 < run ? slices * s->out_h - o0 : run;
        for (ptrdiff_t u = 0; u < segs; u++) {
            const ptrdiff_t row = o0 + u;
            aoff[u] = ((row / s->out_h) * d->sd * hp + (row % s->out_h) * s->sh) * wp;
            boff[u] = row * s->out_w * c_out;
        }
        for (ptrdiff_t grp = 0; grp < s->groups; grp++) {
            /* row kr = ((ci * kd + a) * kh + i) * kw + j, counted up without divisions */
            ptrdiff_t ci = 0, a = 0, i = 0, j = 0, kr = 0;
            for (ptrdiff_t rt = 0; rt < row_tiles; rt++) {
                for (int r = 0; r < GMR; r++) {
                    if (kr < k) {
                        roff[r] = (((grp * s->c_in_g + ci) * span + a * d->dd) * hp + i * s->dh) * wp + j * s->dw;
                        kr++;
                        if (++j == s->kw) {
                            j = 0;
                            if (++i == s->kh) {
                                i = 0;
                                if (++a == d->kd) a = 0, ci++;
                            }
                        }
                    } else {
                        roff[r] = roff[r > 0 ? r - 1 : 0];
                    }
                }
                GT *tile_part = part + (grp * row_tiles + rt) * blocks * GMR * GNR;
                for (ptrdiff_t blk = 0; blk < blocks; blk++)
                    GN(convx_direct_weight_tile_strided)(xp, roff, s->sw, aoff, boff, segs, s->out_w, c_out,
                                                         go + grp * s->c_out_g + blk * GNR,
                                                         tile_part + blk * GMR * GNR);
            }
        }
    }
}

/* grad_weight from convx_direct_weight_outer3d's partial. */
static void GN(convx_direct_outer_store)(const convx_conv_shape *s, const GT *CONVX_RESTRICT part,
                                         GT *CONVX_RESTRICT grad_weight) {
    const ptrdiff_t k = s->c_in_g * s->kh * s->kw, row_tiles = (k + GMR - 1) / GMR;
    const ptrdiff_t blocks = (s->c_out_g + GNR - 1) / GNR;
    for (ptrdiff_t grp = 0; grp < s->groups; grp++)
        for (ptrdiff_t co = 0; co < s->c_out_g; co++)
            for (ptrdiff_t kr = 0; kr < k; kr++)
                grad_weight[(grp * s->c_out_g + co) * k + kr] =
                    part[((grp * row_tiles + kr / GMR) * blocks + co / GNR) * GMR * GNR + kr % GMR * GNR + co % GNR];
}
