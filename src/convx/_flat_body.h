/* Kernels for a 1x1 convolution over whole planes (convx_conv_flat) for one element type and one
 * instruction set, included by _gemm_body.h with its parameters and
 *   GFV      vectors across a tile of convx_flat_conv (GMR rows by GFV * GVL pixels)
 *   GWA, GWB output, input channels of a tile of convx_flat_weight
 *   GREDUCE  the sum of a vector's lanes     GSTREAM  an aligned store that bypasses the caches
 *
 * The forward and the input gradient are one product per image and group, C (m x P) = A (m x k)
 * @ B (k x P), whose B is the image's planes as they lie (P pixels each): a register tile loads
 * its pixels straight from k planes, nothing is packed but the weight, and the planes a strip
 * ahead are prefetched into L2 (the tile reads k rows a whole plane apart, more streams than the
 * hardware prefetcher follows). Outputs larger than the caches are stored past them, which
 * spares reading each line before writing it. The weight gradient is a dot product of a plane
 * of grad_out with a plane of the input for each (output, input channel): tiles of GWA x GWB of
 * them with the pixels as lanes, over chunks of the planes that stay in L1 and L2.
 */

#define GFR (GFV * GVL)
/* Strips ahead whose planes a tile prefetches. */
#define GFLAT_AHEAD 4

/* c[r * ldc + q] = act(start + sum_k a[k * GMR + r] b[k * ldb + q]) for r < rows, q < GFR,
 * where start is c itself (accumulate), bias[r] or 0, and act the activation of epi (none where
 * epi is NULL). stream: c is aligned for GSTREAM and the rows are stored with it. pf, when
 * given, is a strip of b's rows to prefetch into L2. */
GTARGET static inline void GN(convx_flat_tile)(ptrdiff_t kc, const GT *CONVX_RESTRICT a, const GT *CONVX_RESTRICT b,
                                               ptrdiff_t ldb, GT *CONVX_RESTRICT c, ptrdiff_t ldc, ptrdiff_t rows,
                                               int accumulate, const GT *CONVX_RESTRICT bias,
                                               const convx_epilogue *epi, int stream, const GT *pf) {
    GV acc[GMR][GFV];
    for (int r = 0; r < GMR; r++)
        for (int v = 0; v < GFV; v++)
            acc[r][v] = r >= rows ? GZERO() : accumulate ? GLOAD(c + r * ldc + v * GVL) : bias ? GSET1(bias[r]) : GZERO();
    CONVX_UNROLL(4)
    for (ptrdiff_t k = 0; k < kc; k++) {
        GV bv[GFV];
        for (int v = 0; v < GFV; v++) bv[v] = GLOAD(b + k * ldb + v * GVL);
        if (pf)
            for (int v = 0; v < GFV; v++) _mm_prefetch((const char *)(pf + k * ldb + v * GVL), _MM_HINT_T1);
        for (int r = 0; r < GMR; r++) {
            const GV av = GSET1(a[k * GMR + r]);
            for (int v = 0; v < GFV; v++) acc[r][v] = GFMA(av, bv[v], acc[r][v]);
        }
    }
    if (epi) {
        GT tile[GMR * GFR];
        for (int r = 0; r < GMR; r++)
            for (int v = 0; v < GFV; v++) GSTORE(tile + r * GFR + v * GVL, acc[r][v]);
        GACT(epi->kind, tile, tile, GMR * GFR, epi->p0, epi->p1);
        for (int r = 0; r < GMR; r++)
            for (int v = 0; v < GFV; v++) acc[r][v] = GLOAD(tile + r * GFR + v * GVL);
    }
    for (int r = 0; r < GMR; r++) {
        if (r >= rows) break;
        for (int v = 0; v < GFV; v++) {
            if (stream)
                GSTREAM(c + r * ldc + v * GVL, acc[r][v]);
            else
                GSTORE(c + r * ldc + v * GVL, acc[r][v]);
        }
    }
}

/* Scratch elements of one convx_flat_conv call. */
static size_t GN(convx_flat_work_size)(void) { return (size_t)GKC * GFR + (size_t)GMR * GFR; }

/* Columns [lo, hi) (hi - lo <= GFR) of C (m x n, ldc) = act((bias ? bias[r] : 0) + A @ B), with
 * A packed by convx_gemm_pack_a and B (k x n, ldb), act as in convx_flat_tile: a full strip
 * straight from b, a shorter one through copies in work. */
GTARGET static void GN(convx_flat_strip)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const GT *CONVX_RESTRICT packed,
                                         const GT *CONVX_RESTRICT bias, const convx_epilogue *epi,
                                         const GT *CONVX_RESTRICT b, ptrdiff_t ldb,
                                         GT *CONVX_RESTRICT c, ptrdiff_t ldc, ptrdiff_t lo, ptrdiff_t hi, int stream,
                                         GT *CONVX_RESTRICT work) {
    const ptrdiff_t panels = (m + GMR - 1) / GMR, cols = hi - lo;
    const int full = cols == GFR;
    const ptrdiff_t ahead = lo + GFLAT_AHEAD * GFR;
    GT *tile = work + (size_t)GKC * GFR;
    for (ptrdiff_t p0 = 0; p0 < k; p0 += GKC) {
        const ptrdiff_t kc = k - p0 < GKC ? k - p0 : GKC;
        const GT *a_block = packed + p0 * panels * GMR;
        const GT *bb = b + p0 * ldb + lo;
        if (!full) {
            for (ptrdiff_t kk = 0; kk < kc; kk++) {
                memcpy(work + kk * GFR, bb + kk * ldb, (size_t)cols * sizeof(GT));
                memset(work + kk * GFR + cols, 0, (size_t)(GFR - cols) * sizeof(GT));
            }
        }
        for (ptrdiff_t ip = 0; ip < panels; ip++) {
            const ptrdiff_t rows = m - ip * GMR < GMR ? m - ip * GMR : GMR;
            const GT *tile_bias = p0 == 0 && bias ? bias + ip * GMR : NULL;
            const convx_epilogue *tile_epi = p0 + kc >= k ? epi : NULL;
            GT *dst = c + ip * GMR * ldc + lo;
            if (full) {
                const GT *pf = ip == 0 && ahead + GFR <= n ? b + p0 * ldb + ahead : NULL;
                GN(convx_flat_tile)(kc, a_block + ip * kc * GMR, bb, ldb, dst, ldc, rows, p0 > 0, tile_bias, tile_epi,
                                    stream && rows == GMR && p0 + kc >= k, pf);
                continue;
            }
            if (p0 > 0)
                for (ptrdiff_t r = 0; r < rows; r++) memcpy(tile + r * GFR, dst + r * ldc, (size_t)cols * sizeof(GT));
            GN(convx_flat_tile)(kc, a_block + ip * kc * GMR, work, GFR, tile, GFR, rows, p0 > 0, tile_bias, tile_epi, 0,
                                NULL);
            for (ptrdiff_t r = 0; r < rows; r++) memcpy(dst + r * ldc, tile + r * GFR, (size_t)cols * sizeof(GT));
        }
    }
}

/* The columns before the first strip that starts on a cache line of c, when streaming. */
static inline ptrdiff_t GN(convx_flat_head)(const GT *c, ptrdiff_t n_pix, int stream) {
    const ptrdiff_t head = stream ? (ptrdiff_t)((64 - (uintptr_t)c % 64) % 64 / sizeof(GT)) : 0;
    return head < n_pix ? head : n_pix;
}

/* Whether convx_flat_conv streams its stores into c: asked for, and each strip's rows can
 * start on a cache line (planes a whole number of lines long). */
static inline int GN(convx_flat_streams)(const GT *c, ptrdiff_t n_pix, int stream) {
    return stream && (uintptr_t)c % sizeof(GT) == 0 && n_pix * sizeof(GT) % 64 == 0;
}

/* Strips of one output plane of convx_flat_conv (see there). */
static ptrdiff_t GN(convx_flat_strips)(const GT *c, ptrdiff_t n_pix, int stream) {
    const ptrdiff_t head = GN(convx_flat_head)(c, n_pix, GN(convx_flat_streams)(c, n_pix, stream));
    return (head > 0) + (n_pix - head + GFR - 1) / GFR;
}

/* c[n, grp * m + r, p] = act((bias ? bias[grp * m + r] : 0) + sum_j A_grp[r, j] b[n, grp * k + j, p])
 * (act as in convx_flat_tile) for the strips [i0, i1) of the call's planes (strip i: image n, group grp of plane i / strips,
 * strips = convx_flat_strips), with P = n_pix pixels per plane, images b_image and c_image
 * elements apart, and A_grp (m x k) packed by convx_gemm_pack_a at packed + grp * group_size.
 * A strip is GFR pixels; streaming, the first strip of a plane is cut short so that the others
 * start on a cache line. work holds convx_flat_work_size elements. */
GTARGET static void GN(convx_flat_conv)(ptrdiff_t groups, ptrdiff_t m, ptrdiff_t k, ptrdiff_t n_pix,
                                        const GT *CONVX_RESTRICT packed, size_t group_size,
                                        const GT *CONVX_RESTRICT bias, const convx_epilogue *epi,
                                        const GT *CONVX_RESTRICT b, ptrdiff_t b_image, GT *CONVX_RESTRICT c,
                                        ptrdiff_t c_image, int stream, ptrdiff_t i0, ptrdiff_t i1,
                                        GT *CONVX_RESTRICT work) {
    const ptrdiff_t strips = GN(convx_flat_strips)(c, n_pix, stream);
    stream = GN(convx_flat_streams)(c, n_pix, stream);
    const ptrdiff_t head = GN(convx_flat_head)(c, n_pix, stream);
    for (ptrdiff_t i = i0; i < i1; i++) {
        const ptrdiff_t plane = i / strips, st = i % strips, n = plane / groups, grp = plane % groups;
        const ptrdiff_t lo = head > 0 ? (st == 0 ? 0 : head + (st - 1) * GFR) : st * GFR;
        const ptrdiff_t end = head > 0 && st == 0 ? head : lo + GFR;
        GN(convx_flat_strip)(m, n_pix, k, packed + grp * group_size, bias ? bias + grp * m : NULL, epi,
                             b + n * b_image + grp * k * n_pix, n_pix, c + n * c_image + grp * m * n_pix, n_pix, lo,
                             end < n_pix ? end : n_pix, stream, work);
    }
    if (stream)
        _mm_sfence();
}

/* sums[i][j] = sum_{t < images, p < len} g[i][t * g_image + p] x[j][t * x_image + p]: a tile of
 * dot products over the same pixels of consecutive images, the pixels as lanes. With masked
 * loads (AVX-512), the first head pixels of each image (head < GVL: those before x's rows reach
 * a cache line) and the last ones are one masked step each; otherwise head is 0 and the last
 * pixels are summed one by one. */
GTARGET static inline __attribute__((always_inline)) void GN(convx_flat_dots)(
    ptrdiff_t images, ptrdiff_t len, ptrdiff_t head, const GT *const *g, ptrdiff_t g_image, const GT *const *x,
    ptrdiff_t x_image, GT sums[GWA][GWB]) {
    GV acc[GWA][GWB];
    GT tail[GWA][GWB];
    for (int i = 0; i < GWA; i++)
        for (int j = 0; j < GWB; j++) {
            acc[i][j] = GZERO();
            tail[i][j] = 0;
        }
    const ptrdiff_t full = head + (len - head) / GVL * GVL;
    for (ptrdiff_t t = 0; t < images; t++) {
        const ptrdiff_t g0 = t * g_image, x0 = t * x_image;
#ifdef GMASK
        if (head > 0 || full < len) {
            /* the masked steps, [0, head) and [full, len) */
            for (int step = 0; step < 2; step++) {
                const ptrdiff_t lo = step ? full : 0, n = step ? len - full : head;
                if (n <= 0) continue;
                const GMASK mask = GMASK_RANGE(0, n);
                GV xv[GWB];
                for (int j = 0; j < GWB; j++) xv[j] = GMASK_LOAD(mask, x[j] + x0 + lo);
                for (int i = 0; i < GWA; i++) {
                    const GV gv = GMASK_LOAD(mask, g[i] + g0 + lo);
                    for (int j = 0; j < GWB; j++) acc[i][j] = GFMA(gv, xv[j], acc[i][j]);
                }
            }
        }
#endif
        for (ptrdiff_t p = g0 + head, q = x0 + head; p < g0 + full; p += GVL, q += GVL) {
            GV xv[GWB];
            for (int j = 0; j < GWB; j++) xv[j] = GLOAD(x[j] + q);
            for (int i = 0; i < GWA; i++) {
                const GV gv = GLOAD(g[i] + p);
                for (int j = 0; j < GWB; j++) acc[i][j] = GFMA(gv, xv[j], acc[i][j]);
            }
        }
#ifndef GMASK
        for (ptrdiff_t p = full; p < len; p++)
            for (int i = 0; i < GWA; i++)
                for (int j = 0; j < GWB; j++) tail[i][j] += g[i][g0 + p] * x[j][x0 + p];
#endif
    }
    for (int i = 0; i < GWA; i++)
        for (int j = 0; j < GWB; j++) sums[i][j] = GREDUCE(acc[i][j]) + tail[i][j];
}

/* Blocks of GWB input channels of one group of convx_flat_weight. */
static ptrdiff_t GN(convx_flat_weight_blocks)(ptrdiff_t c) { return (c + GWB - 1) / GWB; }

/* gw[(grp * m + co) * c + ci] = sum_{n, p} gy[n, grp * m + co, p] x[n, grp * c + ci, p] (m output
 * and c input channels per group, n_pix pixels per plane) for the input channels of the blocks
 * [u0, u1) (block u: group u / blocks, channels from (u % blocks) * GWB); gw is overwritten
 * there. The planes go in chunks: GWB input rows of a chunk stay in L1 while the m rows of
 * grad_out pass by from L2. */
GTARGET static void GN(convx_flat_weight)(ptrdiff_t groups, ptrdiff_t m, ptrdiff_t c, ptrdiff_t n_pix,
                                          ptrdiff_t batch, const GT *CONVX_RESTRICT gy, const GT *CONVX_RESTRICT x,
                                          GT *CONVX_RESTRICT gw, ptrdiff_t u0, ptrdiff_t u1) {
    const ptrdiff_t blocks = GN(convx_flat_weight_blocks)(c);
    /* 4 KiB of each input row, m rows of grad_out in at most 512 KiB */
    ptrdiff_t chunk = 4096 / (ptrdiff_t)sizeof(GT);
    const ptrdiff_t l2_rows = (512 * 1024 / (ptrdiff_t)sizeof(GT)) / (m > 0 ? m : 1);
    if (chunk > l2_rows) chunk = l2_rows;
    chunk = chunk / GVL * GVL;
    if (chunk < 16 * GVL) chunk = 16 * GVL;
    for (ptrdiff_t u = u0; u < u1; u++) {
        const ptrdiff_t grp = u / blocks, ci0 = u % blocks * GWB;
        for (ptrdiff_t co = 0; co < m; co++)
            for (ptrdiff_t j = ci0; j < ci0 + GWB && j < c; j++) gw[(grp * m + co) * c + j] = 0;
    }
    /* planes shorter than a chunk: a chunk of whole planes of several images */
    const ptrdiff_t per_chunk = n_pix < chunk ? chunk / (n_pix > 0 ? n_pix : 1) : 1;
    const ptrdiff_t g_image = groups * m * n_pix, x_image = groups * c * n_pix;
    /* Where every plane of x starts at the same offset in a cache line (numpy aligns its buffers
     * to 16 bytes only), the pixels before the first line (lead) join the first chunk as a
     * masked step, and every vector load of x's rows after them stays within one line. */
    ptrdiff_t lead = 0;
#ifdef GMASK
    if (n_pix * (ptrdiff_t)sizeof(GT) % 64 == 0 && (uintptr_t)x % sizeof(GT) == 0)
        lead = (ptrdiff_t)((64 - (uintptr_t)x % 64) % 64 / sizeof(GT));
    if (lead >= n_pix) lead = 0;
#endif
    for (ptrdiff_t n = 0; n < batch; n += per_chunk)
        for (ptrdiff_t p0 = 0, end; p0 < n_pix; p0 = end) {
            end = (p0 == 0 ? lead : p0) + chunk;
            const ptrdiff_t len = (n_pix < end ? n_pix : end) - p0, head = p0 == 0 ? lead : 0;
            const ptrdiff_t images = batch - n < per_chunk ? batch - n : per_chunk;
            for (ptrdiff_t u = u0; u < u1; u++) {
                const ptrdiff_t grp = u / blocks, ci0 = u % blocks * GWB;
                const ptrdiff_t nb = c - ci0 < GWB ? c - ci0 : GWB;
                const GT *xr[GWB], *gr[GWA];
                GT sums[GWA][GWB];
                /* rows past the channels repeat the last one; their sums are dropped */
                for (int j = 0; j < GWB; j++)
                    xr[j] = x + ((n * groups + grp) * c + ci0 + (j < nb ? j : nb - 1)) * n_pix + p0;
                for (ptrdiff_t co0 = 0; co0 < m; co0 += GWA) {
                    const ptrdiff_t na = m - co0 < GWA ? m - co0 : GWA;
                    for (int i = 0; i < GWA; i++)
                        gr[i] = gy + ((n * groups + grp) * m + co0 + (i < na ? i : na - 1)) * n_pix + p0;
                    GN(convx_flat_dots)(images, len, head, gr, g_image, xr, x_image, sums);
                    for (ptrdiff_t i = 0; i < na; i++)
                        for (ptrdiff_t j = 0; j < nb; j++) gw[(grp * m + co0 + i) * c + ci0 + j] += sums[i][j];
                }
            }
        }
}

#undef GFR
#undef GFLAT_AHEAD
