/* The packed GEMM for one element type and one instruction set: included by _gemm.h with
 *   GT      the element type (float, double)     GN(name)  name suffixed with type and ISA
 *   GV      the vector type                      GVL       elements per vector
 *   GMR     rows of the register tile            GNV       vectors across the register tile
 *   GKC     depth of a packed block              GNC, GMC  columns, rows of a packed block
 *   GTARGET the function attribute enabling the instruction set
 *   GLOAD, GSTORE, GFMA, GSET1, GZERO, GADD the unaligned load/store, fused multiply-add,
 *   broadcast, zero and add of GV
 * and, where the instruction set has masked loads and stores (AVX-512), GMASK (the mask type),
 * GMASK_LOAD, GMASK_STORE, GMASK_RANGE(lo, hi) (lanes [lo, hi)), GMASK_EVEN (the even lanes),
 * GEVENS(a, b) (the even elements of a then b), GSPREAD_EVEN(v, half) (half 0 or 1 of v's
 * elements in the even lanes) and GTRANSPOSE (a GVL x GVL transpose).
 * Every parameter is #undef'd at the end, ready for the next instantiation.
 */

#define GNR (GNV * GVL)
/* runs of one column block at most (convx_block_runs; blocks are at most GNC columns) */
#define GRUNS (GNC + GNC / GNR + 1)

/* c[0:rows, 0:cols] (ldc) = start + A @ b_panel over kc, where start is c itself when
 * accumulating, else bias[r] per row (0 without bias): A's element (r, k) at a[r * ars + k * aks]
 * for r < GMR, b_panel kc rows of GNR columns (b[k * GNR + q]). */
GTARGET static inline __attribute__((always_inline)) void GN(convx_gemm_tile_strided)(
    ptrdiff_t kc, const GT *CONVX_RESTRICT a, ptrdiff_t ars, ptrdiff_t aks, const GT *CONVX_RESTRICT b,
    GT *CONVX_RESTRICT c, ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t cols, int accumulate,
    const GT *CONVX_RESTRICT bias) {
    GV acc[GMR][GNV];
    const int full = rows == GMR && cols == GNR;
    for (int r = 0; r < GMR; r++)
        for (int v = 0; v < GNV; v++)
            acc[r][v] = !full ? GZERO() : accumulate ? GLOAD(c + r * ldc + v * GVL) : bias ? GSET1(bias[r]) : GZERO();
    CONVX_UNROLL(4)
    for (ptrdiff_t k = 0; k < kc; k++) {
        GV bv[GNV];
        for (int v = 0; v < GNV; v++) bv[v] = GLOAD(b + v * GVL);
        for (int r = 0; r < GMR; r++) {
            const GV av = GSET1(a[r * ars + k * aks]);
            for (int v = 0; v < GNV; v++) acc[r][v] = GFMA(av, bv[v], acc[r][v]);
        }
        b += GNR;
    }
    if (full) {
        for (int r = 0; r < GMR; r++)
            for (int v = 0; v < GNV; v++) GSTORE(c + r * ldc + v * GVL, acc[r][v]);
        return;
    }
    GT tile[GMR * GNR];
    for (int r = 0; r < GMR; r++)
        for (int v = 0; v < GNV; v++) GSTORE(tile + r * GNR + v * GVL, acc[r][v]);
    for (ptrdiff_t r = 0; r < rows; r++) {
        const GT start = bias ? bias[r] : (GT)0;
        for (ptrdiff_t q = 0; q < cols; q++)
            c[r * ldc + q] = (accumulate ? c[r * ldc + q] : start) + tile[r * GNR + q];
    }
}

/* The tile with A a packed panel: a[k * GMR + r]. */
GTARGET static void GN(convx_gemm_tile)(ptrdiff_t kc, const GT *CONVX_RESTRICT a, const GT *CONVX_RESTRICT b,
                                        GT *CONVX_RESTRICT c, ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t cols,
                                        int accumulate, const GT *CONVX_RESTRICT bias) {
    GN(convx_gemm_tile_strided)(kc, a, 1, GMR, b, c, ldc, rows, cols, accumulate, bias);
}

/* The tile with A GMR rows of a row-major matrix: a[r * lda + k] (rows past `rows` are read too). */
GTARGET static void GN(convx_gemm_tile_rows)(ptrdiff_t kc, const GT *CONVX_RESTRICT a, ptrdiff_t lda,
                                             const GT *CONVX_RESTRICT b, GT *CONVX_RESTRICT c, ptrdiff_t ldc,
                                             ptrdiff_t rows, ptrdiff_t cols, int accumulate) {
    GN(convx_gemm_tile_strided)(kc, a, lda, 1, b, c, ldc, rows, cols, accumulate, NULL);
}

/* Elements of the packed A of an m x k matrix. */
static size_t GN(convx_gemm_packed_size)(ptrdiff_t m, ptrdiff_t k) {
    return (size_t)((m + GMR - 1) / GMR * GMR) * (size_t)k;
}

/* Scratch elements of one convx_gemm call (one thread's packed block of B). */
static size_t GN(convx_gemm_work_size)(void) { return (size_t)GKC * GNC; }

/* Columns of one convx_conv_block (or convx_conv_input_block) at most. */
static ptrdiff_t GN(convx_conv_block_cols)(void) { return GNC; }

/* Columns of one convx_conv_weight_block at most. */
static ptrdiff_t GN(convx_conv_weight_cols)(void) { return GKC; }

/* packed = A (m x k, element (r, j) at a[(r % rcycle) * rs + (r / rcycle) * rs2 + (j % kcycle) * cs
 * + (j / kcycle) * cs2]) in depth blocks of GKC, each a run of panels of GMR rows (k-major within
 * a panel), the rows past m zero. */
static void GN(convx_gemm_pack_a_cyclic)(ptrdiff_t m, ptrdiff_t k, const GT *CONVX_RESTRICT a, ptrdiff_t rcycle,
                                         ptrdiff_t rs, ptrdiff_t rs2, ptrdiff_t kcycle, ptrdiff_t cs, ptrdiff_t cs2,
                                         GT *CONVX_RESTRICT packed) {
    const ptrdiff_t panels = (m + GMR - 1) / GMR;
    ptrdiff_t row[GMR], col[GKC];
    for (ptrdiff_t p0 = 0; p0 < k; p0 += GKC) {
        const ptrdiff_t kc = k - p0 < GKC ? k - p0 : GKC;
        for (ptrdiff_t j = 0; j < kc; j++) col[j] = (p0 + j) % kcycle * cs + (p0 + j) / kcycle * cs2;
        for (ptrdiff_t ip = 0; ip < panels; ip++) {
            for (ptrdiff_t r = 0; r < GMR; r++) {
                const ptrdiff_t i = ip * GMR + r;
                row[r] = i < m ? i % rcycle * rs + i / rcycle * rs2 : -1;
            }
            GT *dst = packed + p0 * panels * GMR + ip * kc * GMR;
            for (ptrdiff_t j = 0; j < kc; j++)
                for (ptrdiff_t r = 0; r < GMR; r++) dst[j * GMR + r] = row[r] < 0 ? (GT)0 : a[row[r] + col[j]];
        }
    }
}

/* packed = A (m x k, element (r, j) at a[r * rs + j * cs]), as convx_gemm_pack_a_cyclic packs it. */
static void GN(convx_gemm_pack_a)(ptrdiff_t m, ptrdiff_t k, const GT *CONVX_RESTRICT a, ptrdiff_t rs,
                                  ptrdiff_t cs, GT *CONVX_RESTRICT packed) {
    GN(convx_gemm_pack_a_cyclic)(m, k, a, m > 0 ? m : 1, rs, 0, k > 0 ? k : 1, cs, 0, packed);
}

/* dst[kk * GNR + lane] = src[lane * ld + kk] for kk < kc, lane < lanes (lanes <= GNR), and 0
 * for the lanes past `lanes`: GNR rows of a row-major matrix as convx_gemm's B strip. */
GTARGET static inline void GN(convx_transpose_strip)(const GT *CONVX_RESTRICT src, ptrdiff_t ld, ptrdiff_t kc,
                                                     ptrdiff_t lanes, GT *CONVX_RESTRICT dst) {
    ptrdiff_t kk = 0;
#ifdef GTRANSPOSE
    if (lanes == GNR)
        for (; kk + GVL <= kc; kk += GVL)
            for (int v = 0; v < GNV; v++) GTRANSPOSE(src + v * GVL * ld + kk, ld, dst + kk * GNR + v * GVL, GNR);
#endif
    for (; kk < kc; kk++)
        for (ptrdiff_t lane = 0; lane < GNR; lane++) dst[kk * GNR + lane] = lane < lanes ? src[lane * ld + kk] : 0;
}

/* C (m x n, ldc) = (accumulate ? C : 0) + A @ B, with A packed by convx_gemm_pack_a and B
 * (k x n) row-major with row stride ldb, or with b_trans its transpose (n x k) row-major:
 * element (p, j) at b[j * ldb + p]; work holds convx_gemm_work_size elements. */
static inline __attribute__((always_inline)) void GN(convx_gemm_any)(
    ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const GT *CONVX_RESTRICT packed, const GT *CONVX_RESTRICT b,
    ptrdiff_t ldb, int b_trans, GT *CONVX_RESTRICT c, ptrdiff_t ldc, int accumulate, GT *CONVX_RESTRICT work) {
    const ptrdiff_t panels = (m + GMR - 1) / GMR;
    if (m <= 0 || n <= 0)
        return;
    if (k <= 0) {
        if (!accumulate)
            for (ptrdiff_t r = 0; r < m; r++) memset(c + r * ldc, 0, (size_t)n * sizeof(GT));
        return;
    }
    for (ptrdiff_t j0 = 0; j0 < n; j0 += GNC) {
        const ptrdiff_t nc = n - j0 < GNC ? n - j0 : GNC;
        const ptrdiff_t strips = (nc + GNR - 1) / GNR;
        for (ptrdiff_t p0 = 0; p0 < k; p0 += GKC) {
            const ptrdiff_t kc = k - p0 < GKC ? k - p0 : GKC;
            for (ptrdiff_t jp = 0; jp < strips; jp++) {
                const ptrdiff_t cols = nc - jp * GNR < GNR ? nc - jp * GNR : GNR;
                GT *dst = work + jp * kc * GNR;
                if (b_trans) {
                    GN(convx_transpose_strip)(b + (j0 + jp * GNR) * ldb + p0, ldb, kc, cols, dst);
                    continue;
                }
                const GT *src = b + p0 * ldb + j0 + jp * GNR;
                for (ptrdiff_t j = 0; j < kc; j++) {
                    memcpy(dst + j * GNR, src + j * ldb, (size_t)cols * sizeof(GT));
                    if (cols < GNR) memset(dst + j * GNR + cols, 0, (size_t)(GNR - cols) * sizeof(GT));
                }
            }
            const GT *a_block = packed + p0 * panels * GMR;
            for (ptrdiff_t i0 = 0; i0 < panels; i0 += GMC / GMR) {
                const ptrdiff_t i1 = i0 + GMC / GMR < panels ? i0 + GMC / GMR : panels;
                for (ptrdiff_t jp = 0; jp < strips; jp++) {
                    const ptrdiff_t cols = nc - jp * GNR < GNR ? nc - jp * GNR : GNR;
                    for (ptrdiff_t ip = i0; ip < i1; ip++) {
                        const ptrdiff_t rows = m - ip * GMR < GMR ? m - ip * GMR : GMR;
                        GN(convx_gemm_tile)(kc, a_block + ip * kc * GMR, work + jp * kc * GNR,
                                            c + ip * GMR * ldc + j0 + jp * GNR, ldc, rows, cols,
                                            accumulate || p0 > 0, NULL);
                    }
                }
            }
        }
    }
}

static void GN(convx_gemm)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const GT *CONVX_RESTRICT packed,
                           const GT *CONVX_RESTRICT b, ptrdiff_t ldb, GT *CONVX_RESTRICT c, ptrdiff_t ldc,
                           int accumulate, GT *CONVX_RESTRICT work) {
    GN(convx_gemm_any)(m, n, k, packed, b, ldb, 0, c, ldc, accumulate, work);
}

/* convx_gemm with B given transposed: element (p, j) at b[j * ldb + p] (a channels-last image's
 * pixels as B's columns). */
static void GN(convx_gemm_bt)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const GT *CONVX_RESTRICT packed,
                              const GT *CONVX_RESTRICT b, ptrdiff_t ldb, GT *CONVX_RESTRICT c, ptrdiff_t ldc,
                              int accumulate, GT *CONVX_RESTRICT work) {
    GN(convx_gemm_any)(m, n, k, packed, b, ldb, 1, c, ldc, accumulate, work);
}


/* dst[t] = src[t * step] for t in [lo, hi), 0 for the other t in [0, len), len <= GNR; src is
 * read only there. */
GTARGET static inline void GN(convx_copy_run)(GT *CONVX_RESTRICT dst, const GT *CONVX_RESTRICT src, ptrdiff_t lo,
                                              ptrdiff_t hi, ptrdiff_t len, ptrdiff_t step) {
#ifdef GMASK
    if (step <= 2) {
        for (int v = 0; v < GNV; v++) {
            const ptrdiff_t base = v * GVL;
            if (base >= len) break;
            const GMASK store = GMASK_RANGE(-base, len - base);
            if (step == 1) {
                /* (plain loads and stores where a whole vector is in range: masked ones are slower) */
                const GV v = lo <= base && hi >= base + GVL ? GLOAD(src + base)
                                                            : GMASK_LOAD(GMASK_RANGE(lo - base, hi - base), src + base);
                if (len >= base + GVL)
                    GSTORE(dst + base, v);
                else
                    GMASK_STORE(dst + base, store, v);
            } else {
                /* the even elements of two vectors' worth of src (a plain load where the
                 * element after its last is still in range) */
                const ptrdiff_t a = 2 * (lo - base), b = 2 * (hi - base);
                const GV first = lo <= base && hi > base + GVL / 2
                                     ? GLOAD(src + 2 * base)
                                     : GMASK_LOAD(GMASK_RANGE(a, b) & GMASK_EVEN, src + 2 * base);
                const GV second = lo <= base + GVL / 2 && hi > base + GVL
                                      ? GLOAD(src + 2 * base + GVL)
                                      : GMASK_LOAD(GMASK_RANGE(a - GVL, b - GVL) & GMASK_EVEN, src + 2 * base + GVL);
                if (len >= base + GVL)
                    GSTORE(dst + base, GEVENS(first, second));
                else
                    GMASK_STORE(dst + base, store, GEVENS(first, second));
            }
        }
        return;
    }
#endif
    for (ptrdiff_t t = 0; t < lo; t++) dst[t] = 0;
    for (ptrdiff_t t = lo; t < hi; t++) dst[t] = src[t * step];
    for (ptrdiff_t t = hi; t < len; t++) dst[t] = 0;
}

/* The lanes past nc of the last strip of a packed block of B (kc rows of strips of GNR), zero. */
static inline void GN(convx_zero_tail)(GT *work, ptrdiff_t nc, ptrdiff_t kc) {
    if (nc % GNR == 0)
        return;
    for (ptrdiff_t k = 0; k < kc; k++) {
        GT *dst = work + (nc / GNR) * kc * GNR + k * GNR;
        for (ptrdiff_t t = nc % GNR; t < GNR; t++) dst[t] = 0;
    }
}

/* dst[r * ld + at[u] + t] = col[k0 + r, column run[u].t + t] for r < kb, t < run[u].len: rows
 * [k0, k0 + kb) of a column matrix (tap-major, see convx_pack_columns) over the runs of a block,
 * zero where a tap is in the padding. The rows of one tap share their runs' ranges and source
 * offsets; only the channel changes. */
GTARGET static void GN(convx_pack_rows)(const convx_conv_shape *s, int flat, const GT *CONVX_RESTRICT x,
                                        const convx_run *run, const ptrdiff_t *at, ptrdiff_t runs, ptrdiff_t k0,
                                        ptrdiff_t kb, GT *CONVX_RESTRICT dst, ptrdiff_t ld) {
    ptrdiff_t lo[GRUNS], hi[GRUNS], src[GRUNS];
    const ptrdiff_t plane = s->height * s->width;
    for (ptrdiff_t r = 0; r < kb;) {
        const ptrdiff_t tap = (k0 + r) / s->c_in_g, ci = (k0 + r) % s->c_in_g;
        const ptrdiff_t rows = s->c_in_g - ci < kb - r ? s->c_in_g - ci : kb - r;
        const ptrdiff_t ih_off = tap / s->kw * s->dh, iw_off = tap % s->kw * s->dw;
        for (ptrdiff_t u = 0; u < runs; u++) {
            const ptrdiff_t ih = run[u].ih + ih_off, iw = run[u].iw + iw_off;
            convx_run_range(s, flat, ih, iw, run[u].len, &lo[u], &hi[u]);
            src[u] = run[u].base + ci * plane + ih * s->width + iw;
        }
        for (ptrdiff_t c = 0; c < rows; c++, r++)
            for (ptrdiff_t u = 0; u < runs; u++)
                GN(convx_copy_run)(dst + r * ld + at[u], x + src[u] + c * plane, lo[u], hi[u], run[u].len, s->sw);
    }
}

/* The column block [q0, q0 + nc) of the column matrix of group grp (column q: image
 * q / (out_h * out_w), output pixel q % (out_h * out_w); row k, in tap-major order: input
 * channel k % c_in_g of the group, tap t = k / c_in_g = (t / kw, t % kw)), rows [p0, p0 + kc),
 * packed into strips of GNR columns as convx_gemm packs B:
 * work[strip * kc * GNR + (k - p0) * GNR + lane], lanes past nc zero.
 * The block is cut into runs of columns along one output row within one strip; each row of
 * the block copies its runs from the input rows they read, zero where a tap is in the padding.
 * Padding may be negative (a crop). */
GTARGET static void GN(convx_pack_columns)(const convx_conv_shape *s, const GT *CONVX_RESTRICT x, ptrdiff_t grp,
                                   ptrdiff_t q0, ptrdiff_t nc, ptrdiff_t p0, ptrdiff_t kc,
                                   GT *CONVX_RESTRICT work) {
    convx_run run[GRUNS];
    ptrdiff_t at[GRUNS];
    const int flat = convx_conv_flat(s);
    const ptrdiff_t runs = convx_block_runs(s, flat, grp, q0, nc, GNR, run);
    for (ptrdiff_t u = 0; u < runs; u++) at[u] = run[u].t / GNR * kc * GNR + run[u].t % GNR;
    GN(convx_pack_rows)(s, flat, x, run, at, runs, p0, kc, work, GNR);
    GN(convx_zero_tail)(work, nc, kc);
}

/* c[r * ldc + t] = (accumulate ? c[r * ldc + t] : bias ? bias[r] : 0) + tile[r * GNR + t] for
 * r < rows, t in [t0, t1): lanes of a tile into a piece of C (c is addressed from lane 0, and
 * only lanes [t0, t1) are touched). */
GTARGET static inline void GN(convx_add_lanes)(const GT *CONVX_RESTRICT tile, GT *c, ptrdiff_t ldc, ptrdiff_t rows,
                                               ptrdiff_t t0, ptrdiff_t t1, int accumulate,
                                               const GT *CONVX_RESTRICT bias) {
#ifdef GMASK
    for (ptrdiff_t r = 0; r < rows; r++) {
        const GV start = bias && !accumulate ? GSET1(bias[r]) : GZERO();
        for (int v = 0; v < GNV; v++) {
            const GMASK mask = GMASK_RANGE(t0 - v * GVL, t1 - v * GVL);
            if (!mask) continue;
            GT *dst = c + r * ldc + v * GVL;
            const GV old = accumulate ? GMASK_LOAD(mask, dst) : start;
            GMASK_STORE(dst, mask, GADD(old, GLOAD(tile + r * GNR + v * GVL)));
        }
    }
#else
    for (ptrdiff_t r = 0; r < rows; r++) {
        const GT start = bias ? bias[r] : (GT)0;
        for (ptrdiff_t t = t0; t < t1; t++)
            c[r * ldc + t] = (accumulate ? c[r * ldc + t] : start) + tile[r * GNR + t];
    }
#endif
}

/* out[n, co, pixel] = act(out[n, co, pixel]) for the columns q of [q0, q0 + nc) (see
 * convx_pack_columns) and channels co of [co0, co0 + m), act the activation of epi. */
static void GN(convx_activate_columns)(const convx_conv_shape *s, const convx_epilogue *epi, GT *out, ptrdiff_t co0,
                                       ptrdiff_t m, ptrdiff_t q0, ptrdiff_t nc) {
    const ptrdiff_t n_out = s->out_h * s->out_w, c_out = s->groups * s->c_out_g;
    for (ptrdiff_t q = q0; q < q0 + nc;) {
        const ptrdiff_t n = q / n_out, pos = q % n_out;
        const ptrdiff_t len = n_out - pos < q0 + nc - q ? n_out - pos : q0 + nc - q;
        for (ptrdiff_t co = co0; co < co0 + m; co++) {
            GT *run = out + (n * c_out + co) * n_out + pos;
            GACT(epi->kind, run, run, len, epi->p0, epi->p1);
        }
        q += len;
    }
}

/* out[n, co, pixel] = act(bias[co] + sum_k W[co, k] col[k, q]) for the columns q of [q0, q0 + nc)
 * (see convx_pack_columns) and every group, act the activation of epi (none where it is NULL),
 * applied to each group's block of columns as soon as it is complete; packed holds each group's
 * W, its columns in the column matrix's tap-major order, packed by convx_gemm_pack_a_cyclic,
 * group_size elements apart; work holds convx_gemm_work_size elements. */
GTARGET static void GN(convx_conv_block)(const convx_conv_shape *s, const GT *CONVX_RESTRICT packed, size_t group_size,
                                 const GT *CONVX_RESTRICT bias, const convx_epilogue *epi,
                                 const GT *CONVX_RESTRICT x, GT *CONVX_RESTRICT out, ptrdiff_t q0, ptrdiff_t nc,
                                 GT *CONVX_RESTRICT work) {
    const ptrdiff_t m = s->c_out_g, k = s->c_in_g * s->kh * s->kw, n_out = s->out_h * s->out_w;
    const ptrdiff_t panels = (m + GMR - 1) / GMR, strips = (nc + GNR - 1) / GNR;
    const ptrdiff_t c_out = s->groups * m;
    GT tile[GMR * GNR];
    for (ptrdiff_t grp = 0; grp < s->groups; grp++) {
        const GT *a = packed + grp * group_size;
        const GT *b_grp = bias ? bias + grp * m : NULL;
        for (ptrdiff_t p0 = 0; p0 < k; p0 += GKC) {
            const ptrdiff_t kc = k - p0 < GKC ? k - p0 : GKC;
            GN(convx_pack_columns)(s, x, grp, q0, nc, p0, kc, work);
            const GT *a_block = a + p0 * panels * GMR;
            for (ptrdiff_t i0 = 0; i0 < panels; i0 += GMC / GMR) {
                const ptrdiff_t i1 = i0 + GMC / GMR < panels ? i0 + GMC / GMR : panels;
                for (ptrdiff_t jp = 0; jp < strips; jp++) {
                    const ptrdiff_t q = q0 + jp * GNR;
                    const ptrdiff_t cols = nc - jp * GNR < GNR ? nc - jp * GNR : GNR;
                    const ptrdiff_t n = q / n_out, pos = q % n_out;
                    for (ptrdiff_t ip = i0; ip < i1; ip++) {
                        const ptrdiff_t rows = m - ip * GMR < GMR ? m - ip * GMR : GMR;
                        const ptrdiff_t co = grp * m + ip * GMR;
                        const GT *tile_bias = p0 == 0 && b_grp ? b_grp + ip * GMR : NULL;
                        if (pos + cols <= n_out) {
                            GN(convx_gemm_tile)(kc, a_block + ip * kc * GMR, work + jp * kc * GNR,
                                                out + (n * c_out + co) * n_out + pos, n_out, rows, cols,
                                                p0 > 0, tile_bias);
                            continue;
                        }
                        /* the strip runs on into the next images */
                        GN(convx_gemm_tile)(kc, a_block + ip * kc * GMR, work + jp * kc * GNR, tile, GNR, GMR,
                                            GNR, 0, NULL);
                        for (ptrdiff_t t0 = 0; t0 < cols;) {
                            const ptrdiff_t nt = (q + t0) / n_out, pt = (q + t0) % n_out;
                            const ptrdiff_t t1 = n_out - pt < cols - t0 ? t0 + n_out - pt : cols;
                            GN(convx_add_lanes)(tile, out + (nt * c_out + co) * n_out + pt - t0, n_out, rows, t0, t1,
                                                p0 > 0, tile_bias);
                            t0 = t1;
                        }
                    }
                }
            }
        }
        if (epi) GN(convx_activate_columns)(s, epi, out, grp * m, m, q0, nc);
    }
}

/* dst[offset[i] + t * step] += src[i * GNR + t] for t in [lo, hi) (hi <= GNR), i < rows: a run
 * of `rows` tile rows added into the input gradient (dst addressed from t = 0, only the t in
 * [lo, hi) touched). */
GTARGET static inline void GN(convx_add_runs)(GT *dst, const ptrdiff_t *offset, ptrdiff_t rows,
                                              const GT *CONVX_RESTRICT src, ptrdiff_t lo, ptrdiff_t hi,
                                              ptrdiff_t step) {
#ifdef GMASK
    if (step == 1) {
        for (ptrdiff_t b = lo / GVL * GVL; b < hi; b += GVL) {
            const GMASK mask = GMASK_RANGE(lo - b, hi - b);
            for (ptrdiff_t i = 0; i < rows; i++) {
                GT *d = dst + offset[i] + b;
                GMASK_STORE(d, mask, GADD(GMASK_LOAD(mask, d), GMASK_LOAD(mask, src + i * GNR + b)));
            }
        }
        return;
    }
    if (step == 2) {
        /* t in [b, b + GVL/2) to the even lanes of dst + 2b, the rest to those of dst + 2b + GVL */
        for (ptrdiff_t b = lo / GVL * GVL; b < hi; b += GVL) {
            const GMASK mask = GMASK_RANGE(lo - b, hi - b);
            const GMASK even0 = GMASK_RANGE(2 * (lo - b), 2 * (hi - b)) & GMASK_EVEN;
            const GMASK even1 = GMASK_RANGE(2 * (lo - b) - GVL, 2 * (hi - b) - GVL) & GMASK_EVEN;
            for (ptrdiff_t i = 0; i < rows; i++) {
                GT *d = dst + offset[i] + 2 * b;
                const GV v = GMASK_LOAD(mask, src + i * GNR + b);
                if (even0) GMASK_STORE(d, even0, GADD(GMASK_LOAD(even0, d), GSPREAD_EVEN(v, 0)));
                if (even1) GMASK_STORE(d + GVL, even1, GADD(GMASK_LOAD(even1, d + GVL), GSPREAD_EVEN(v, 1)));
            }
        }
        return;
    }
#endif
    for (ptrdiff_t i = 0; i < rows; i++)
        for (ptrdiff_t t = lo; t < hi; t++) dst[offset[i] + t * step] += src[i * GNR + t];
}

/* grad_in[n, grp * c_in_g + c] += col2im(W_grp^T @ grad_out) for the input channels c in
 * [c0, c0 + nch) of group grp, over the columns [q0, q0 + nc) (as in convx_pack_columns), with
 * no column matrix: each tile of the product is added into grad_in along the runs of its strip.
 * The rows are ordered tap by tap (row r: channel c0 + r % nch, tap r / nch = (i, j) in row-major
 * order), so that the rows of a tile write different planes; packed is that W_grp^T
 * (nch * kh * kw x c_out_g), packed by convx_gemm_pack_a_cyclic. work holds
 * convx_gemm_work_size elements. */
GTARGET static void GN(convx_conv_input_block)(const convx_conv_shape *s, const GT *CONVX_RESTRICT packed,
                                               ptrdiff_t grp, ptrdiff_t c0, ptrdiff_t nch,
                                               const GT *CONVX_RESTRICT grad_out, GT *CONVX_RESTRICT grad_in,
                                               ptrdiff_t q0, ptrdiff_t nc, GT *CONVX_RESTRICT work) {
    convx_run run[GRUNS];
    ptrdiff_t strip_runs[GNC / GNR + 1];
    ptrdiff_t row_plane[GMC], row_dh[GMC], row_dw[GMC];
    GT tile[GMR * GNR];
    const ptrdiff_t m = s->c_out_g, n_out = s->out_h * s->out_w, plane = s->height * s->width;
    const ptrdiff_t taps = s->kh * s->kw, strips = (nc + GNR - 1) / GNR;
    const ptrdiff_t panels = (nch * taps + GMR - 1) / GMR;
    const ptrdiff_t runs = convx_block_runs(s, 0, grp, q0, nc, GNR, run);
    for (ptrdiff_t u = 0, jp = 0; u < runs; u++)
        if ((run[u].t + run[u].len) % GNR == 0 || run[u].t + run[u].len == nc) strip_runs[jp++] = u + 1;
    for (ptrdiff_t p0 = 0; p0 < m; p0 += GKC) {
        const ptrdiff_t kc = m - p0 < GKC ? m - p0 : GKC;
        /* B: strip jp, row kk, lane l = grad_out[n, grp * m + p0 + kk, pixel of q0 + jp * GNR + l] */
        for (ptrdiff_t t = 0; t < nc;) {
            const ptrdiff_t n = (q0 + t) / n_out, pos = (q0 + t) % n_out;
            ptrdiff_t len = n_out - pos < nc - t ? n_out - pos : nc - t;
            if (len > GNR - t % GNR) len = GNR - t % GNR;
            const GT *src = grad_out + (n * s->groups * m + grp * m + p0) * n_out + pos;
            GT *dst = work + t / GNR * kc * GNR + t % GNR;
            for (ptrdiff_t kk = 0; kk < kc; kk++) GN(convx_copy_run)(dst + kk * GNR, src + kk * n_out, 0, len, len, 1);
            t += len;
        }
        GN(convx_zero_tail)(work, nc, kc);
        const GT *a_block = packed + p0 * panels * GMR;
        for (ptrdiff_t i0 = 0; i0 < panels; i0 += GMC / GMR) {
            const ptrdiff_t i1 = i0 + GMC / GMR < panels ? i0 + GMC / GMR : panels;
            for (ptrdiff_t r = i0 * GMR; r < i1 * GMR; r++) {
                const ptrdiff_t tap = r / nch;
                row_plane[r - i0 * GMR] = (c0 + r % nch) * plane;
                row_dh[r - i0 * GMR] = tap / s->kw * s->dh;
                row_dw[r - i0 * GMR] = tap % s->kw * s->dw;
            }
            for (ptrdiff_t jp = 0; jp < strips; jp++) {
                for (ptrdiff_t ip = i0; ip < i1; ip++) {
                    const ptrdiff_t lo_row = ip * GMR;
                    const ptrdiff_t hi_row = lo_row + GMR < nch * taps ? lo_row + GMR : nch * taps;
                    GN(convx_gemm_tile)(kc, a_block + ip * kc * GMR, work + jp * kc * GNR, tile, GNR, GMR, GNR, 0,
                                        NULL);
                    /* the tile's rows in runs of one tap: each run of the strip lands at the same
                     * place in each of their planes */
                    for (ptrdiff_t r = lo_row; r < hi_row;) {
                        const ptrdiff_t rb = r - i0 * GMR, tap_end = (r / nch + 1) * nch;
                        const ptrdiff_t r_end = tap_end < hi_row ? tap_end : hi_row;
                        for (ptrdiff_t u = jp ? strip_runs[jp - 1] : 0; u < strip_runs[jp]; u++) {
                            const ptrdiff_t ih = run[u].ih + row_dh[rb], iw = run[u].iw + row_dw[rb];
                            ptrdiff_t lo, hi;
                            convx_run_range(s, 0, ih, iw, run[u].len, &lo, &hi);
                            if (lo < hi)
                                GN(convx_add_runs)(grad_in + run[u].base + ih * s->width + iw, row_plane + rb,
                                                   r_end - r, tile + (r - ip * GMR) * GNR + run[u].t % GNR, lo, hi,
                                                   s->sw);
                        }
                        r = r_end;
                    }
                }
            }
        }
    }
}

/* dst[r * ldd + t] = col[k0 + r, q0 + t] for r < kb, t < nc (nc <= GKC): rows [k0, k0 + kb) of
 * group grp's column matrix (rows in tap-major order, as in convx_pack_columns) over the block,
 * in runs along output rows of at most GNR columns. */
GTARGET static void GN(convx_column_rows)(const convx_conv_shape *s, const GT *CONVX_RESTRICT x, ptrdiff_t grp,
                                          ptrdiff_t k0, ptrdiff_t kb, ptrdiff_t q0, ptrdiff_t nc,
                                          GT *CONVX_RESTRICT dst, ptrdiff_t ldd) {
    convx_run run[GRUNS];
    ptrdiff_t at[GRUNS];
    const int flat = convx_conv_flat(s);
    const ptrdiff_t runs = convx_block_runs(s, flat, grp, q0, nc, GNR, run);
    for (ptrdiff_t u = 0; u < runs; u++) at[u] = run[u].t;
    GN(convx_pack_rows)(s, flat, x, run, at, runs, k0, kb, dst, ldd);
}

/* Scratch elements of one convx_conv_weight_block call for m = c_out_g. */
static size_t GN(convx_conv_weight_work_size)(ptrdiff_t m) {
    const ptrdiff_t strips = (m + GNR - 1) / GNR;
    return (size_t)GKC * (size_t)(strips * GNR) + (size_t)GKC * (GMC + GMR);
}

/* partial[k, co] += sum_q col[k, q] grad_out[n, co, pixel] over the columns q of [q0, q0 + nc)
 * (nc <= GKC; rows and columns as in convx_pack_columns, rows tap-major) for every group: the
 * weight gradient transposed, group grp's (c_in_g * kh * kw) x c_out_g block at
 * grp * c_out_g * c_in_g * kh * kw.
 * A is the column matrix's rows over the block (GMC at a time), B grad_out's rows turned into
 * strips of channels. work holds convx_conv_weight_work_size(c_out_g) elements. */
GTARGET static void GN(convx_conv_weight_block)(const convx_conv_shape *s, const GT *CONVX_RESTRICT grad_out,
                                                const GT *CONVX_RESTRICT x, ptrdiff_t q0, ptrdiff_t nc,
                                                GT *CONVX_RESTRICT partial, GT *CONVX_RESTRICT work) {
    const ptrdiff_t m = s->c_out_g, k = s->c_in_g * s->kh * s->kw, n_out = s->out_h * s->out_w;
    const ptrdiff_t strips = (m + GNR - 1) / GNR;
    GT *b_block = work, *rows = work + (size_t)GKC * (size_t)(strips * GNR);
    for (ptrdiff_t grp = 0; grp < s->groups; grp++) {
        GT *part = partial + grp * m * k;
        /* B: strip jp, pixel t, lane l = grad_out[n, grp * m + jp * GNR + l, pixel of q0 + t] */
        for (ptrdiff_t t = 0; t < nc;) {
            const ptrdiff_t n = (q0 + t) / n_out, pos = (q0 + t) % n_out;
            const ptrdiff_t len = n_out - pos < nc - t ? n_out - pos : nc - t;
            const GT *src = grad_out + (n * s->groups * m + grp * m) * n_out + pos;
            for (ptrdiff_t jp = 0; jp < strips; jp++) {
                const ptrdiff_t lanes = m - jp * GNR < GNR ? m - jp * GNR : GNR;
                GN(convx_transpose_strip)(src + jp * GNR * n_out, n_out, len, lanes, b_block + jp * nc * GNR + t * GNR);
            }
            t += len;
        }
        for (ptrdiff_t k0 = 0; k0 < k; k0 += GMC) {
            const ptrdiff_t kb = k - k0 < GMC ? k - k0 : GMC;
            GN(convx_column_rows)(s, x, grp, k0, kb, q0, nc, rows, GKC);
            for (ptrdiff_t r = kb; r < (kb + GMR - 1) / GMR * GMR; r++) memset(rows + r * GKC, 0, (size_t)nc * sizeof(GT));
            for (ptrdiff_t ip = 0; ip * GMR < kb; ip++) {
                const ptrdiff_t rows_here = kb - ip * GMR < GMR ? kb - ip * GMR : GMR;
                for (ptrdiff_t jp = 0; jp < strips; jp++) {
                    const ptrdiff_t cols = m - jp * GNR < GNR ? m - jp * GNR : GNR;
                    GN(convx_gemm_tile_rows)(nc, rows + ip * GMR * GKC, GKC, b_block + jp * nc * GNR,
                                             part + (k0 + ip * GMR) * m + jp * GNR, m, rows_here, cols, 1);
                }
            }
        }
    }
}

#include "_direct_body.h"
#include "_flat_body.h"
#include "_plane_body.h"

#undef GNR
#undef GRUNS
#undef GN
#undef GT
#undef GACT
#undef GV
#undef GVL
#undef GMR
#undef GNV
#undef GKC
#undef GNC
#undef GMC
#undef GTARGET
#undef GLOAD
#undef GSTORE
#undef GFMA
#undef GSET1
#undef GZERO
#undef GADD
#undef GMASK
#undef GMASK_LOAD
#undef GMASK_STORE
#undef GMASK_RANGE
#undef GMASK_EVEN
#undef GEVENS
#undef GSPREAD_EVEN
#undef GTRANSPOSE
#undef GCOLUMN8
#undef GFV
#undef GWA
#undef GWB
#undef GREDUCE
#undef GSTREAM
