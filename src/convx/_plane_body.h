/* The plane-wise forward of a shallow convolution for one element type and one instruction set,
 * included by _gemm_body.h with its parameters (GT, GV, GVL, GLOAD, GSTORE, GFMA, GSET1, GZERO,
 * GTARGET).
 *
 * For layers whose depth (input channels per group x taps) is small (LeNet's first layer: 20
 * filters of one 5x5 channel, whose output channels are too few for the channels-last kernels'
 * lanes; the first 3x3 layers of CIFAR-sized nets), the output pixels are the lanes: a register
 * tile holds GPC output channels by GPV vectors of pixels along one output row, and each step
 * of the depth, one (input channel, tap), loads GPV vectors of the input row it reads and
 * broadcasts GPC weights. The input is read from a zero-padded copy of one image's planes, so
 * that every tap of a run of pixels is one unit-stride load (stride 1 along the rows) and the
 * padding's zeros are multiplied, as im2col multiplies them. Nothing is packed per pixel: the
 * depth's loads come from L1.
 */

#define GPC 4
#define GPV 3

/* Output channels of one tile (a block of the packed weight). */
static ptrdiff_t GN(convx_plane_channels)(void) { return GPC; }

/* Pixels of one vector of a tile. */
static ptrdiff_t GN(convx_plane_lanes)(void) { return GVL; }

/* Elements of one group's packed weight: ceil(c_out_g / GPC) blocks of k steps of GPC lanes. */
static size_t GN(convx_plane_weight_size)(ptrdiff_t c_out_g, ptrdiff_t k) {
    return (size_t)((c_out_g + GPC - 1) / GPC) * (size_t)k * GPC;
}

/* Elements of the padded planes of one group of one image, and the zeros after them that a last
 * tile's spare lanes read. */
static size_t GN(convx_plane_buffer_size)(const convx_conv_shape *s) {
    const ptrdiff_t wp = convx_padded_width(s), hp = convx_padded_height(s);
    return (size_t)(s->c_in_g * hp * wp + (s->kw - 1) * s->dw + GPV * GVL);
}

/* One group's weight w (c_out_g rows of depth = c_in_g * kh * kw) in blocks of GPC output
 * channels: packed[(blk * depth + k) * GPC + l] = w[(blk * GPC + l) * depth + k], 0 for the
 * lanes past c_out_g (convx_plane_weight_size elements). */
static void GN(convx_plane_pack_weight)(const GT *CONVX_RESTRICT w, ptrdiff_t c_out_g, ptrdiff_t depth,
                                        GT *CONVX_RESTRICT packed) {
    for (ptrdiff_t blk = 0; blk < (c_out_g + GPC - 1) / GPC; blk++)
        for (ptrdiff_t k = 0; k < depth; k++)
            for (ptrdiff_t l = 0; l < GPC; l++) {
                const ptrdiff_t co = blk * GPC + l;
                packed[(blk * depth + k) * GPC + l] = co < c_out_g ? w[co * depth + k] : (GT)0;
            }
}

/* out[c * n_out + p] = bias[c] + sum over the depth's steps k of w[k * GPC + c] * a[off[k] + p]
 * for c < channels, p < len; the tile has nv <= GPV vectors (a constant where it is inlined). */
GTARGET static inline __attribute__((always_inline)) void GN(convx_plane_tile_body)(
    const int nv, const GT *CONVX_RESTRICT a, const ptrdiff_t *off, ptrdiff_t depth, const GT *CONVX_RESTRICT w,
    const GT *bias, GT *CONVX_RESTRICT out, ptrdiff_t n_out, ptrdiff_t channels, ptrdiff_t len) {
    GV acc[GPC][GPV];
    for (int c = 0; c < GPC; c++) {
        const GV start = GSET1(bias[c]);
        for (int v = 0; v < nv; v++) acc[c][v] = start;
    }
    CONVX_UNROLL(4)
    for (ptrdiff_t k = 0; k < depth; k++) {
        const GT *pa = a + off[k];
        GV xv[GPV];
        for (int v = 0; v < nv; v++) xv[v] = GLOAD(pa + v * GVL);
        for (int c = 0; c < GPC; c++) {
            const GV wv = GSET1(w[k * GPC + c]);
            for (int v = 0; v < nv; v++) acc[c][v] = GFMA(wv, xv[v], acc[c][v]);
        }
    }
    if (len == nv * GVL) {
        for (ptrdiff_t c = 0; c < channels; c++)
            for (int v = 0; v < nv; v++) GSTORE(out + c * n_out + v * GVL, acc[c][v]);
        return;
    }
    GT tile[GPV * GVL];
    for (ptrdiff_t c = 0; c < channels; c++) {
        for (int v = 0; v < nv; v++) GSTORE(tile + v * GVL, acc[c][v]);
        memcpy(out + c * n_out, tile, (size_t)len * sizeof(GT));
    }
}

#define CONVX_PLANE_TILE(NV)                                                                              \
    GTARGET static void GN(convx_plane_tile##NV)(const GT *a, const ptrdiff_t *off, ptrdiff_t depth, const GT *w, \
                                                  const GT *bias, GT *out, ptrdiff_t n_out, ptrdiff_t channels, \
                                                  ptrdiff_t len) {                                          \
        GN(convx_plane_tile_body)(NV, a, off, depth, w, bias, out, n_out, channels, len);                 \
    }
CONVX_PLANE_TILE(1)
CONVX_PLANE_TILE(2)
CONVX_PLANE_TILE(3)
#undef CONVX_PLANE_TILE

/* Items [u0, u1) of the forward, item u = (n * groups + grp) * blocks + blk: output channels
 * [blk * GPC, blk * GPC + GPC) of group grp of image n, every output row. x and out point at the
 * batch; packed holds each group's blocks (convx_plane_pack_weight, group_size elements apart);
 * bias is NULL or c_out elements; buf holds convx_plane_buffer_size elements. Stride 1 along the
 * rows (sw), any other geometry with padding >= 0; depth c_in_g * kh * kw <= CONVX_PLANE_DEPTH. */
GTARGET static void GN(convx_plane_conv)(const convx_conv_shape *s, const GT *CONVX_RESTRICT packed, size_t group_size,
                                         const GT *CONVX_RESTRICT bias, const GT *CONVX_RESTRICT x,
                                         GT *CONVX_RESTRICT out, ptrdiff_t u0, ptrdiff_t u1, GT *CONVX_RESTRICT buf) {
    const ptrdiff_t wp = convx_padded_width(s), hp = convx_padded_height(s), plane = s->height * s->width;
    const ptrdiff_t n_out = s->out_h * s->out_w, blocks = (s->c_out_g + GPC - 1) / GPC;
    const ptrdiff_t taps = s->kh * s->kw, depth = s->c_in_g * taps, step = GPV * GVL;
    ptrdiff_t off[CONVX_PLANE_DEPTH];
    for (ptrdiff_t c = 0; c < s->c_in_g; c++)
        for (ptrdiff_t i = 0; i < s->kh; i++)
            for (ptrdiff_t j = 0; j < s->kw; j++) off[c * taps + i * s->kw + j] = c * hp * wp + i * s->dh * wp + j * s->dw;
    const size_t buf_size = GN(convx_plane_buffer_size)(s);
    ptrdiff_t held = -1;
    for (ptrdiff_t u = u0; u < u1; u++) {
        const ptrdiff_t image_grp = u / blocks, grp = image_grp % s->groups, blk = u % blocks;
        if (image_grp != held) {
            /* The planes of (image, group) with their padding, then zeros for the spare lanes. */
            const GT *src = x + image_grp * s->c_in_g * plane;
            memset(buf, 0, buf_size * sizeof(GT));
            for (ptrdiff_t c = 0; c < s->c_in_g; c++)
                for (ptrdiff_t ih = 0; ih < s->height; ih++)
                    memcpy(buf + (c * hp + ih + s->ph) * wp + s->pw, src + c * plane + ih * s->width,
                           (size_t)s->width * sizeof(GT));
            held = image_grp;
        }
        const ptrdiff_t co = blk * GPC, channels = s->c_out_g - co < GPC ? s->c_out_g - co : GPC;
        GT lane_bias[GPC];
        for (ptrdiff_t l = 0; l < GPC; l++) lane_bias[l] = bias && l < channels ? bias[grp * s->c_out_g + co + l] : 0;
        const GT *w = packed + grp * group_size + blk * depth * GPC;
        GT *dst = out + (image_grp * s->c_out_g + co) * n_out;
        for (ptrdiff_t oh = 0; oh < s->out_h; oh++) {
            const GT *row = buf + oh * s->sh * wp;
            for (ptrdiff_t ow = 0; ow < s->out_w; ow += step) {
                const ptrdiff_t len = s->out_w - ow < step ? s->out_w - ow : step, nv = (len + GVL - 1) / GVL;
                GT *at = dst + oh * s->out_w + ow;
                if (nv == 3)
                    GN(convx_plane_tile3)(row + ow, off, depth, w, lane_bias, at, n_out, channels, len);
                else if (nv == 2)
                    GN(convx_plane_tile2)(row + ow, off, depth, w, lane_bias, at, n_out, channels, len);
                else
                    GN(convx_plane_tile1)(row + ow, off, depth, w, lane_bias, at, n_out, channels, len);
            }
        }
    }
}

#undef GPC
#undef GPV
