/* The depthwise 3-D kernels for one floating type D3T (suffix D3S), included twice by _depthwise3d.h.
 * lo[e], hi[e]: the output columns ow whose tap e lands inside the input row, [lo, hi). */

/* grad_in[od*sd - pd + a*dd, oh*sh - ph + b*dh, ow*sw - pw + e*dw] += weight[j, a, b, e] *
 * grad_out[j, od, oh, ow] for the output rows r = od * out_h + oh in [row_begin, row_end), the m
 * output channels j of one input channel (grad_out's n_out apart, weight's kd*kh*kw apart), every
 * tap inside the input: one input channel's volume of the input gradient, added to. The sums run
 * in a fixed order (row, channel, tap), whatever the caller's threads. */
CONVX_CLONES static void CONVX_DW3D(convx_dw3d_input)(
    const D3T *CONVX_RESTRICT grad_out, ptrdiff_t m, const D3T *CONVX_RESTRICT weight, D3T *CONVX_RESTRICT grad_in,
    const convx_dw3d_shape *s, ptrdiff_t row_begin, ptrdiff_t row_end, const ptrdiff_t *lo, const ptrdiff_t *hi) {
    const ptrdiff_t n_out = s->out_d * s->out_h * s->out_w, taps = s->kd * s->kh * s->kw;
    for (ptrdiff_t r = row_begin; r < row_end; r++) {
        const ptrdiff_t od = r / s->out_h, oh = r % s->out_h;
        for (ptrdiff_t j = 0; j < m; j++) {
            const D3T *src = grad_out + j * n_out + r * s->out_w;
            const D3T *w = weight + j * taps;
            for (ptrdiff_t a = 0; a < s->kd; a++) {
                const ptrdiff_t in_d = od * s->sd - s->pd + a * s->dd;
                if (in_d < 0 || in_d >= s->depth) continue;
                for (ptrdiff_t b = 0; b < s->kh; b++) {
                    const ptrdiff_t in_h = oh * s->sh - s->ph + b * s->dh;
                    if (in_h < 0 || in_h >= s->height) continue;
                    D3T *dst = grad_in + (in_d * s->height + in_h) * s->width;
                    for (ptrdiff_t e = 0; e < s->kw; e++) {
                        const D3T v = w[(a * s->kh + b) * s->kw + e];
                        const ptrdiff_t off = e * s->dw - s->pw;
                        if (s->sw == 1) {
                            CONVX_SIMD for (ptrdiff_t ow = lo[e]; ow < hi[e]; ow++) dst[ow + off] += v * src[ow];
                        } else if (s->sw == 2) {
                            for (ptrdiff_t ow = lo[e]; ow < hi[e]; ow++) dst[2 * ow + off] += v * src[ow];
                        } else {
                            for (ptrdiff_t ow = lo[e]; ow < hi[e]; ow++) dst[ow * s->sw + off] += v * src[ow];
                        }
                    }
                }
            }
        }
    }
}

/* wsum[(a*kh + b)*kw + e] = sum of grad_out[od, oh, ow] * x[od*sd - pd + a*dd, oh*sh - ph + b*dh,
 * ow*sw - pw + e*dw] over the output rows r = od * out_h + oh in [row_begin, row_end), every tap
 * inside the input: one (image, output channel) volume's share of the weight gradient. The
 * products are first summed per output column in partial (kd*kh*kw*out_w elements, no reduction
 * in the row loops so that they vectorise; whole slices by the 2-D plane kernel), then across the
 * columns in order. Where check, each slice's rows of grad_out are tested right after their
 * products (still in cache): returns 0 if one is not finite (wsum then meaningless), else 1. */
CONVX_CLONES static int CONVX_DW3D(convx_dw3d_weight)(
    const D3T *CONVX_RESTRICT grad_out, const D3T *CONVX_RESTRICT x, D3T *CONVX_RESTRICT partial,
    D3T *CONVX_RESTRICT wsum, const convx_dw3d_shape *s, ptrdiff_t row_begin, ptrdiff_t row_end,
    const ptrdiff_t *lo, const ptrdiff_t *hi, int check) {
    const ptrdiff_t plane_taps = s->kh * s->kw, taps = s->kd * plane_taps, plane = s->height * s->width;
    const ptrdiff_t out_plane = s->out_h * s->out_w;
    int finite = 1;
    for (ptrdiff_t k = 0; k < taps * s->out_w; k++) partial[k] = 0;
    for (ptrdiff_t od = row_begin / s->out_h; od * s->out_h < row_end; od++) {
        /* this slice's rows [oh0, oh1) within the band */
        const ptrdiff_t first = od * s->out_h;
        const ptrdiff_t oh0 = row_begin > first ? row_begin - first : 0;
        const ptrdiff_t oh1 = row_end - first < s->out_h ? row_end - first : s->out_h;
        const D3T *dy = grad_out + od * out_plane;
        for (ptrdiff_t a = 0; a < s->kd; a++) {
            const ptrdiff_t in_d = od * s->sd - s->pd + a * s->dd;
            if (in_d < 0 || in_d >= s->depth) continue;
            D3T *acc = partial + a * plane_taps * s->out_w; /* depth tap a's rows of column sums */
            if (oh0 == 0 && oh1 == s->out_h)
                CONVX_DW3D(convx_dw_weight_plane)(dy, x + in_d * plane, acc, s->height, s->width, s->out_h, s->out_w,
                                                  s->kh, s->kw, s->sh, s->sw, s->ph, s->pw, s->dh, s->dw, lo, hi);
            else
                CONVX_DW3D(convx_dw_weight_rows)(dy, x + in_d * plane, acc, s->height, s->width, s->out_w, s->kh,
                                                 s->kw, s->sh, s->sw, s->ph, s->pw, s->dh, s->dw, lo, hi, oh0, oh1, 0,
                                                 s->out_w);
        }
        if (check && !CONVX_DW3D(convx_all_finite)(dy + oh0 * s->out_w, (oh1 - oh0) * s->out_w)) finite = 0;
    }
    for (ptrdiff_t t = 0; t < taps; t++) {
        D3T total = 0;
        for (ptrdiff_t ow = 0; ow < s->out_w; ow++) total += partial[t * s->out_w + ow];
        wsum[t] = total;
    }
    return finite;
}
