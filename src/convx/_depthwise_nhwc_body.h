/* The NHWC depthwise kernels for one floating type NT (suffix NS), included twice by _depthwise_nhwc.h. */

/* Channels a window keeps in registers at once: two AVX-512 vectors, four AVX2 ones. */
#define CONVX_DWL_BLOCK (128 / (ptrdiff_t)sizeof(NT))

/* out[c0 + c] = first[c] (0 without it) + sum over the n_taps (src[t], w[t]) pairs of
 * w[t][c0 + c] * src[t][c0 + c], for c < c1 - c0, the taps in order. ``block`` (a literal, or 0):
 * c1 - c0, to keep the sums in registers. */
static inline __attribute__((always_inline)) void CONVX_DWL(convx_dwl_channels)(
    const NT *const *CONVX_RESTRICT src, const NT *const *CONVX_RESTRICT w, ptrdiff_t n_taps,
    const NT *CONVX_RESTRICT first, NT *CONVX_RESTRICT out, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t block) {
    const ptrdiff_t n = block ? block : c1 - c0;
    NT b[CONVX_DWL_BLOCK];
    NT *CONVX_RESTRICT run = block ? b : out + c0;
    ptrdiff_t c;
    if (first) {
        CONVX_SIMD for (c = 0; c < n; c++) run[c] = first[c0 + c];
    } else {
        CONVX_SIMD for (c = 0; c < n; c++) run[c] = 0;
    }
    for (ptrdiff_t t = 0; t < n_taps; t++) {
        const NT *CONVX_RESTRICT s = src[t] + c0;
        const NT *CONVX_RESTRICT k = w[t] + c0;
        CONVX_SIMD for (c = 0; c < n; c++) run[c] += k[c] * s[c];
    }
    if (block) CONVX_SIMD for (c = 0; c < n; c++) out[c0 + c] = run[c];
}

/* out[0..channels) from the window's taps, a register block of channels at a time. */
static inline __attribute__((always_inline)) void CONVX_DWL(convx_dwl_window)(
    const NT *const *src, const NT *const *w, ptrdiff_t n_taps, const NT *first, NT *out, ptrdiff_t channels) {
    ptrdiff_t c0 = 0;
    for (; c0 + CONVX_DWL_BLOCK <= channels; c0 += CONVX_DWL_BLOCK)
        CONVX_DWL(convx_dwl_channels)(src, w, n_taps, first, out, c0, c0 + CONVX_DWL_BLOCK, CONVX_DWL_BLOCK);
    if (c0 < channels) CONVX_DWL(convx_dwl_channels)(src, w, n_taps, first, out, c0, channels, 0);
}

/* One output row oh of one image (height x width x channels): out[ow, c] = bias[c] (0 where bias
 * is NULL) + sum over the taps (i, j) inside the image of wt[i * kw + j, c] * image[ih, iw, c],
 * ih = oh * sh - ph + i * dh, iw = ow * sw - pw + j * dw. ``ptrs``: 2 * kh * kw pointers of scratch. */
CONVX_CLONES static void CONVX_DWL(convx_dwl_forward_row)(
    const NT *image, const NT *wt, const NT *bias, NT *out, const NT **ptrs, ptrdiff_t height, ptrdiff_t width,
    ptrdiff_t channels, ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t oh, ptrdiff_t sh, ptrdiff_t sw,
    ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw) {
    const NT **src = ptrs, **w = ptrs + kh * kw;
    const ptrdiff_t ih0 = oh * sh - ph;
    for (ptrdiff_t ow = 0; ow < out_w; ow++) {
        const ptrdiff_t iw0 = ow * sw - pw;
        ptrdiff_t n_taps = 0;
        for (ptrdiff_t i = 0; i < kh; i++) {
            const ptrdiff_t ih = ih0 + i * dh;
            if (ih < 0 || ih >= height) continue;
            for (ptrdiff_t j = 0; j < kw; j++) {
                const ptrdiff_t iw = iw0 + j * dw;
                if (iw < 0 || iw >= width) continue;
                src[n_taps] = image + (ih * width + iw) * channels;
                w[n_taps] = wt + (i * kw + j) * channels;
                n_taps++;
            }
        }
        CONVX_DWL(convx_dwl_window)(src, w, n_taps, bias, out + ow * channels, channels);
    }
}

/* One input-gradient row ih of one image, overwritten: grad_in[iw, c] = sum over the taps (i, j)
 * and outputs (oh, ow) with oh * sh - ph + i * dh = ih and ow * sw - pw + j * dw = iw of
 * wt[i * kw + j, c] * grad[oh, ow, c] (grad: out_h x out_w x channels). */
CONVX_CLONES static void CONVX_DWL(convx_dwl_input_row)(
    const NT *grad, const NT *wt, NT *grad_in, const NT **ptrs, ptrdiff_t width, ptrdiff_t channels,
    ptrdiff_t out_h, ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t ih, ptrdiff_t sh, ptrdiff_t sw,
    ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw) {
    const NT **src = ptrs, **w = ptrs + kh * kw;
    for (ptrdiff_t iw = 0; iw < width; iw++) {
        ptrdiff_t n_taps = 0;
        for (ptrdiff_t i = 0; i < kh; i++) {
            const ptrdiff_t th = ih + ph - i * dh;
            if (th < 0 || th % sh) continue;
            const ptrdiff_t oh = th / sh;
            if (oh >= out_h) continue;
            for (ptrdiff_t j = 0; j < kw; j++) {
                const ptrdiff_t tw = iw + pw - j * dw;
                if (tw < 0 || tw % sw) continue;
                const ptrdiff_t ow = tw / sw;
                if (ow >= out_w) continue;
                src[n_taps] = grad + (oh * out_w + ow) * channels;
                w[n_taps] = wt + (i * kw + j) * channels;
                n_taps++;
            }
        }
        CONVX_DWL(convx_dwl_window)(src, w, n_taps, NULL, grad_in + iw * channels, channels);
    }
}

/* partial[i * kw + j, c] += grad[oh, ow, c] * image[ih, iw, c] over the outputs ow of row oh and
 * the taps (i, j) inside the image (geometry as convx_dwl_forward_row). */
CONVX_CLONES static void CONVX_DWL(convx_dwl_weight_row)(
    const NT *CONVX_RESTRICT grad, const NT *CONVX_RESTRICT image, NT *CONVX_RESTRICT partial, ptrdiff_t height,
    ptrdiff_t width, ptrdiff_t channels, ptrdiff_t out_w, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t oh, ptrdiff_t sh,
    ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, ptrdiff_t dh, ptrdiff_t dw) {
    const ptrdiff_t ih0 = oh * sh - ph;
    for (ptrdiff_t ow = 0; ow < out_w; ow++) {
        const NT *CONVX_RESTRICT g = grad + ow * channels;
        const ptrdiff_t iw0 = ow * sw - pw;
        for (ptrdiff_t i = 0; i < kh; i++) {
            const ptrdiff_t ih = ih0 + i * dh;
            if (ih < 0 || ih >= height) continue;
            for (ptrdiff_t j = 0; j < kw; j++) {
                const ptrdiff_t iw = iw0 + j * dw;
                if (iw < 0 || iw >= width) continue;
                const NT *CONVX_RESTRICT s = image + (ih * width + iw) * channels;
                NT *CONVX_RESTRICT p = partial + (i * kw + j) * channels;
                CONVX_SIMD for (ptrdiff_t c = 0; c < channels; c++) p[c] += g[c] * s[c];
            }
        }
    }
}

#undef CONVX_DWL_BLOCK
