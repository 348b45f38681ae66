/* The NHWC depthwise kernels for one floating type NT (suffix NS), included twice by _depthwise_nhwc.h. */

#ifdef CONVX_DWL_VECTORS
/* 64 bytes of NT (one AVX-512 register, two AVX2 ones, four SSE ones: each clone splits it as its
 * instruction set has them), loaded and stored unaligned. */
typedef NT CONVX_DWL(convx_dwl_vec) __attribute__((vector_size(64), aligned(sizeof(NT))));
#define VEC CONVX_DWL(convx_dwl_vec)
#define LANES ((ptrdiff_t)(64 / sizeof(NT)))
#endif

/* Taps [*lo, *hi) of an axis land inside [0, size) for a window starting at ``start`` (dilation d). */
static inline void CONVX_DWL(convx_dwl_taps)(ptrdiff_t start, ptrdiff_t size, ptrdiff_t kernel, ptrdiff_t d,
                                             ptrdiff_t *lo, ptrdiff_t *hi) {
    ptrdiff_t a = start < 0 ? (-start + d - 1) / d : 0;
    ptrdiff_t b = size - start <= 0 ? 0 : (size - start + d - 1) / d;
    *lo = a < kernel ? a : kernel;
    *hi = b < kernel ? b : kernel;
    if (*hi < *lo) *hi = *lo;
}

/* One output row oh of one image (height x width x channels): out[ow, c] = bias[c] (0 where bias
 * is NULL) + sum over the taps (i, j) inside the image of wt[i * kw + j, c] * image[ih, iw, c],
 * ih = oh * sh - ph + i * dh, iw = ow * sw - pw + j * dw, the taps in row-major order; blocks of
 * channels summed in registers over the window's taps. */
CONVX_CLONES static void CONVX_DWL(convx_dwl_forward_row)(
    const NT *CONVX_RESTRICT image, const NT *CONVX_RESTRICT wt, const NT *CONVX_RESTRICT bias,
    NT *CONVX_RESTRICT out, ptrdiff_t height, ptrdiff_t width, ptrdiff_t channels, ptrdiff_t out_w, ptrdiff_t kh,
    ptrdiff_t kw, ptrdiff_t oh, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw) {
    const ptrdiff_t ih0 = oh * sh - ph;
    ptrdiff_t i_lo, i_hi;
    CONVX_DWL(convx_dwl_taps)(ih0, height, kh, dh, &i_lo, &i_hi);
    for (ptrdiff_t ow = 0; ow < out_w; ow++) {
        NT *CONVX_RESTRICT o = out + ow * channels;
        const ptrdiff_t iw0 = ow * sw - pw;
        ptrdiff_t j_lo, j_hi, c0 = 0;
        CONVX_DWL(convx_dwl_taps)(iw0, width, kw, dw, &j_lo, &j_hi);
#ifdef CONVX_DWL_VECTORS
        for (; c0 + 2 * LANES <= channels; c0 += 2 * LANES) {
            VEC a0 = {0}, a1 = {0};
            if (bias) {
                a0 = *(const VEC *)(bias + c0);
                a1 = *(const VEC *)(bias + c0 + LANES);
            }
            for (ptrdiff_t i = i_lo; i < i_hi; i++)
                for (ptrdiff_t j = j_lo; j < j_hi; j++) {
                    const NT *s = image + ((ih0 + i * dh) * width + iw0 + j * dw) * channels + c0;
                    const NT *k = wt + (i * kw + j) * channels + c0;
                    a0 += *(const VEC *)k * *(const VEC *)s;
                    a1 += *(const VEC *)(k + LANES) * *(const VEC *)(s + LANES);
                }
            *(VEC *)(o + c0) = a0;
            *(VEC *)(o + c0 + LANES) = a1;
        }
        if (c0 + LANES <= channels) {
            VEC a0 = {0};
            if (bias) a0 = *(const VEC *)(bias + c0);
            for (ptrdiff_t i = i_lo; i < i_hi; i++)
                for (ptrdiff_t j = j_lo; j < j_hi; j++)
                    a0 += *(const VEC *)(wt + (i * kw + j) * channels + c0)
                          * *(const VEC *)(image + ((ih0 + i * dh) * width + iw0 + j * dw) * channels + c0);
            *(VEC *)(o + c0) = a0;
            c0 += LANES;
        }
#endif
        if (c0 < channels) {
            const ptrdiff_t n = channels - c0;
            NT *CONVX_RESTRICT r = o + c0;
            if (bias) {
                memcpy(r, bias + c0, (size_t)n * sizeof(NT));
            } else {
                memset(r, 0, (size_t)n * sizeof(NT));
            }
            for (ptrdiff_t i = i_lo; i < i_hi; i++)
                for (ptrdiff_t j = j_lo; j < j_hi; j++) {
                    const NT *CONVX_RESTRICT s = image + ((ih0 + i * dh) * width + iw0 + j * dw) * channels + c0;
                    const NT *CONVX_RESTRICT k = wt + (i * kw + j) * channels + c0;
                    CONVX_SIMD for (ptrdiff_t c = 0; c < n; c++) r[c] += k[c] * s[c];
                }
        }
    }
}

/* One input-gradient row ih of one image, overwritten: grad_in[iw, c] = sum over the taps (i, j)
 * and outputs (oh, ow) with oh * sh - ph + i * dh = ih and ow * sw - pw + j * dw = iw of
 * wt[i * kw + j, c] * grad[oh, ow, c] (grad: out_h x out_w x channels), the taps in row-major order.
 * rows[i]: the oh of tap i for this ih, cols[iw * kw + j]: the ow of tap j for iw; -1 where there is
 * none (outside grad, or between strides). */
CONVX_CLONES static void CONVX_DWL(convx_dwl_input_row)(
    const NT *CONVX_RESTRICT grad, const NT *CONVX_RESTRICT wt, NT *CONVX_RESTRICT grad_in, ptrdiff_t width,
    ptrdiff_t channels, ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, const int64_t *rows, const int64_t *cols) {
    for (ptrdiff_t iw = 0; iw < width; iw++) {
        NT *CONVX_RESTRICT o = grad_in + iw * channels;
        const int64_t *col = cols + iw * kw;
        ptrdiff_t c0 = 0;
#ifdef CONVX_DWL_VECTORS
        for (; c0 + 2 * LANES <= channels; c0 += 2 * LANES) {
            VEC a0 = {0}, a1 = {0};
            for (ptrdiff_t i = 0; i < kh; i++) {
                if (rows[i] < 0) continue;
                for (ptrdiff_t j = 0; j < kw; j++) {
                    if (col[j] < 0) continue;
                    const NT *g = grad + (rows[i] * out_w + col[j]) * channels + c0;
                    const NT *k = wt + (i * kw + j) * channels + c0;
                    a0 += *(const VEC *)k * *(const VEC *)g;
                    a1 += *(const VEC *)(k + LANES) * *(const VEC *)(g + LANES);
                }
            }
            *(VEC *)(o + c0) = a0;
            *(VEC *)(o + c0 + LANES) = a1;
        }
        if (c0 + LANES <= channels) {
            VEC a0 = {0};
            for (ptrdiff_t i = 0; i < kh; i++) {
                if (rows[i] < 0) continue;
                for (ptrdiff_t j = 0; j < kw; j++)
                    if (col[j] >= 0)
                        a0 += *(const VEC *)(wt + (i * kw + j) * channels + c0)
                              * *(const VEC *)(grad + (rows[i] * out_w + col[j]) * channels + c0);
            }
            *(VEC *)(o + c0) = a0;
            c0 += LANES;
        }
#endif
        if (c0 < channels) {
            const ptrdiff_t n = channels - c0;
            NT *CONVX_RESTRICT r = o + c0;
            memset(r, 0, (size_t)n * sizeof(NT));
            for (ptrdiff_t i = 0; i < kh; i++) {
                if (rows[i] < 0) continue;
                for (ptrdiff_t j = 0; j < kw; j++) {
                    if (col[j] < 0) continue;
                    const NT *CONVX_RESTRICT g = grad + (rows[i] * out_w + col[j]) * channels + c0;
                    const NT *CONVX_RESTRICT k = wt + (i * kw + j) * channels + c0;
                    CONVX_SIMD for (ptrdiff_t c = 0; c < n; c++) r[c] += k[c] * g[c];
                }
            }
        }
    }
}

/* partial[i * kw + j, c] += sum over the outputs ow of row oh whose tap (i, j) lands inside the
 * image of grad[ow, c] * image[ih, iw, c] (geometry as convx_dwl_forward_row): per tap, blocks of
 * channels summed in registers along the row. */
CONVX_CLONES static void CONVX_DWL(convx_dwl_weight_row)(
    const NT *CONVX_RESTRICT grad, const NT *CONVX_RESTRICT image, NT *CONVX_RESTRICT partial, ptrdiff_t height,
    ptrdiff_t width, ptrdiff_t channels, ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t oh, ptrdiff_t sh,
    ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw) {
    const ptrdiff_t ih0 = oh * sh - ph;
    ptrdiff_t i_lo, i_hi;
    CONVX_DWL(convx_dwl_taps)(ih0, height, kh, dh, &i_lo, &i_hi);
    for (ptrdiff_t j = 0; j < kw; j++) {
        /* the outputs ow with 0 <= ow * sw - pw + j * dw < width: [ow_lo, ow_hi) */
        const ptrdiff_t first = pw - j * dw, past = width + pw - j * dw;
        ptrdiff_t ow_lo = first <= 0 ? 0 : (first + sw - 1) / sw;
        ptrdiff_t ow_hi = past <= 0 ? 0 : (past + sw - 1) / sw;
        if (ow_hi > out_w) ow_hi = out_w;
        if (ow_lo > ow_hi) ow_lo = ow_hi;
        for (ptrdiff_t i = i_lo; i < i_hi; i++) {
            const ptrdiff_t row = ((ih0 + i * dh) * width - pw + j * dw) * channels;  /* the offset at ow = 0 */
            NT *CONVX_RESTRICT p = partial + (i * kw + j) * channels;
            ptrdiff_t c0 = 0;
#ifdef CONVX_DWL_VECTORS
            for (; c0 + 2 * LANES <= channels; c0 += 2 * LANES) {
                VEC a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
                ptrdiff_t ow = ow_lo;
                for (; ow + 1 < ow_hi; ow += 2) {
                    const NT *g = grad + ow * channels + c0, *s = image + row + ow * sw * channels + c0;
                    const NT *g2 = g + channels, *s2 = s + sw * channels;
                    a0 += *(const VEC *)g * *(const VEC *)s;
                    a1 += *(const VEC *)(g + LANES) * *(const VEC *)(s + LANES);
                    b0 += *(const VEC *)g2 * *(const VEC *)s2;
                    b1 += *(const VEC *)(g2 + LANES) * *(const VEC *)(s2 + LANES);
                }
                if (ow < ow_hi) {
                    const NT *g = grad + ow * channels + c0, *s = image + row + ow * sw * channels + c0;
                    a0 += *(const VEC *)g * *(const VEC *)s;
                    a1 += *(const VEC *)(g + LANES) * *(const VEC *)(s + LANES);
                }
                *(VEC *)(p + c0) += a0 + b0;
                *(VEC *)(p + c0 + LANES) += a1 + b1;
            }
#endif
            for (ptrdiff_t ow = ow_lo; c0 < channels && ow < ow_hi; ow++) {
                const NT *CONVX_RESTRICT g = grad + ow * channels, *CONVX_RESTRICT s = image + row + ow * sw * channels;
                CONVX_SIMD for (ptrdiff_t c = c0; c < channels; c++) p[c] += g[c] * s[c];
            }
        }
    }
}

#ifdef CONVX_DWL_VECTORS
#undef VEC
#undef LANES
#endif
