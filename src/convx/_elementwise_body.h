/* The element-wise kernels for one element type: included by _elementwise.h with ET the type
 * (float, double), ES its suffix (f, d) and CONVX_EW_EXP & co. its libm functions. */

/* 2^k for an integral k of the normal exponent range, built in the exponent bits (adding
 * 1.5 * 2^mantissa leaves k in the low bits). */
static inline ET CONVX_EW(convx_pow2)(ET k) {
    const ET rounder = CONVX_EW_ROUNDER, shifted = k + rounder;
    EU bits, rounder_bits;
    memcpy(&bits, &shifted, sizeof bits);
    memcpy(&rounder_bits, &rounder, sizeof bits);
    bits = ((bits - rounder_bits) + (EU)CONVX_EW_BIAS) << CONVX_EW_MANTISSA;
    ET power;
    memcpy(&power, &bits, sizeof bits);
    return power;
}

/* e^r - 1 for x = n ln2 + r, |r| <= ln2/2, and n; x clamped to [LO, HI] first. Written for SIMD
 * lanes (no libm call, no branch, so that loops over it vectorise): e^r - 1 is its Taylor
 * polynomial, r (1 + r (1/2 + r (1/6 + ...))): no constant term, so no cancellation near 0, and
 * -0 stays -0. n is rounded by adding 1.5 * 2^mantissa. */
static inline ET CONVX_EW(convx_expm1_reduced)(ET x, ET *n_out) {
    const ET clamped = x > CONVX_EW_EXP_HI ? CONVX_EW_EXP_HI : (x < CONVX_EW_EXP_LO ? CONVX_EW_EXP_LO : x);
    const ET rounder = CONVX_EW_ROUNDER;
    const ET n = (clamped * (ET)M_LOG2E + rounder) - rounder;
    *n_out = n;
    const ET r = (clamped - n * CONVX_EW_LN2_HI) - n * CONVX_EW_LN2_LO;
    ET p = (ET)convx_inverse_factorial[CONVX_EW_EXP_TERMS];
    for (int k = CONVX_EW_EXP_TERMS - 1; k >= 1; k--) p = p * r + (ET)convx_inverse_factorial[k];
    return r * p;
}

/* (q + 1) 2^n, scaled in two halves so that the subnormal results round as libm's do. */
static inline ET CONVX_EW(convx_scale)(ET q, ET n) {
    const ET rounder = CONVX_EW_ROUNDER;
    const ET half = (n * (ET)0.5 + rounder) - rounder;
    return (q + (ET)1) * CONVX_EW(convx_pow2)(half) * CONVX_EW(convx_pow2)(n - half);
}

/* e^x within an ulp or two of libm: +inf above the overflow threshold, 0 below the smallest
 * subnormal, NaN for NaN. */
static inline ET CONVX_EW(convx_exp)(ET x) {
    ET n;
    const ET q = CONVX_EW(convx_expm1_reduced)(x, &n);
    const ET e = CONVX_EW(convx_scale)(q, n);
    return x > CONVX_EW_EXP_HI ? (ET)INFINITY : (x < CONVX_EW_EXP_LO ? (ET)0 : e);
}

/* e^x - 1, accurate near 0 (there n = 0 and the polynomial is the result). */
static inline ET CONVX_EW(convx_expm1)(ET x) {
    ET n;
    const ET q = CONVX_EW(convx_expm1_reduced)(x, &n);
    const ET e = n == 0 ? q : CONVX_EW(convx_scale)(q, n) - (ET)1;
    return x > CONVX_EW_EXP_HI ? (ET)INFINITY : (x < CONVX_EW_EXP_LO ? (ET)-1 : e);
}

/* tanh(x) = sign(x) e / (e + 2), e = e^(2|x|) - 1, with |x| clamped where tanh rounds to 1. */
static inline ET CONVX_EW(convx_tanh)(ET x) {
    const ET a = x < 0 ? -x : x;
    const ET e = CONVX_EW(convx_expm1)((ET)2 * (a > CONVX_EW_TANH_ONE ? (ET)CONVX_EW_TANH_ONE : a));
    const ET t = e / (e + (ET)2);
    return x < 0 ? -t : (x > 0 ? t : x);
}

/* log(1 + u) for u in [0, 1]: 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = u / (2 + u) <= 1/3. */
static inline ET CONVX_EW(convx_log1p_unit)(ET u) {
    const ET s = u / ((ET)2 + u), w = s * s;
    ET p = (ET)(1.0 / (2 * CONVX_EW_LOG_TERMS + 1));
    for (int k = CONVX_EW_LOG_TERMS - 1; k >= 0; k--) p = p * w + (ET)(1.0 / (2 * k + 1));
    return (ET)2 * s * p;
}

/* softplus of z = beta x before the division by beta: max(z, 0) + log(1 + e^-|z|). */
static inline ET CONVX_EW(convx_softplus)(ET z) {
    const ET a = z < 0 ? -z : z;
    return (z > 0 ? z : (ET)0) + CONVX_EW(convx_log1p_unit)(CONVX_EW(convx_exp)(-a));
}

/* erfc(x) by the fit convx_erfc_fit (float accuracy), and 2 - erfc(-x) for x < 0. */
static inline ET CONVX_EW(convx_erfc_fit)(ET x) {
    const ET z = x < 0 ? -x : x;
    const ET t = (ET)1 / ((ET)1 + (ET)0.5 * z);
    ET p = (ET)convx_erfc_fit[11];
    for (int k = 10; k >= 0; k--) p = p * t + (ET)convx_erfc_fit[k];
    const ET e = t * CONVX_EW(convx_exp)(p - z * z);
    return x < 0 ? (ET)2 - e : e;
}

/* y[i] = act(x[i]) for i < n; y may be x (in place). */
CONVX_CLONES static void CONVX_EW(convx_activation_forward)(int kind, const ET *x, ET *y, ptrdiff_t n, double p0,
                                                            double p1) {
#define CONVX_EW_MAP(expr) CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) { const ET v = x[i]; y[i] = (expr); }
    /* a * b rounded once, as PyTorch's coefficient is (no fused multiply-add in the loops). */
    const ET a = (ET)p0, b = (ET)p1, ab = (ET)(p0 * p1);
    switch (kind) {
    case CONVX_ACT_RELU:
        CONVX_EW_MAP(v < 0 ? (ET)0 : v)
        break;
    case CONVX_ACT_RELU6:
        CONVX_EW_MAP(v < 0 ? (ET)0 : (v > 6 ? (ET)6 : v))
        break;
    case CONVX_ACT_LEAKY_RELU:
        CONVX_EW_MAP(v > 0 ? v : v * a)
        break;
    case CONVX_ACT_ELU:
    case CONVX_ACT_ELU_INPUT:
        CONVX_EW_MAP(v < 0 ? CONVX_EW_EXPM1(v) * ab : v * b)
        break;
    case CONVX_ACT_SIGMOID:
        CONVX_EW_MAP((ET)1 / ((ET)1 + CONVX_EW_EXP(-v)))
        break;
    case CONVX_ACT_TANH:
        CONVX_EW_MAP(CONVX_EW_TANH(v))
        break;
    case CONVX_ACT_SILU:
        CONVX_EW_MAP(v / ((ET)1 + CONVX_EW_EXP(-v)))
        break;
    case CONVX_ACT_GELU:
        CONVX_EW_MAP((ET)0.5 * v * CONVX_EW_ERFC(v * (ET)-M_SQRT1_2))
        break;
    case CONVX_ACT_GELU_TANH: {
        const ET beta = (ET)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = (ET)0.044715;
        CONVX_EW_MAP((ET)0.5 * v * ((ET)1 + CONVX_EW_TANH(beta * (v + kappa * v * v * v))))
        break;
    }
    case CONVX_ACT_HARDSWISH:
        CONVX_EW_MAP(v * (v + 3 < 0 ? (ET)0 : (v + 3 > 6 ? (ET)6 : v + 3)) / (ET)6)
        break;
    case CONVX_ACT_HARDSIGMOID:
        CONVX_EW_MAP((v + 3 < 0 ? (ET)0 : (v + 3 > 6 ? (ET)6 : v + 3)) / (ET)6)
        break;
    case CONVX_ACT_SOFTPLUS:
        CONVX_EW_MAP(v * a > b ? v : CONVX_EW(convx_softplus)(v * a) / a)
        break;
    default:
        break;
    }
#undef CONVX_EW_MAP
}

/* grad_in[i] = grad_out[i] * act'(x[i]), from saved[i]: the forward's output y or its input x
 * (see enum convx_activation). grad_in may be grad_out. */
CONVX_CLONES static void CONVX_EW(convx_activation_backward)(int kind, const ET *grad_out, const ET *saved,
                                                             ET *grad_in, ptrdiff_t n, double p0, double p1) {
#define CONVX_EW_MAP(expr)                                                                                \
    CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {                                                        \
        const ET g = grad_out[i], s = saved[i];                                                           \
        grad_in[i] = (expr);                                                                              \
    }
    const ET a = (ET)p0, b = (ET)p1, ab = (ET)(p0 * p1);
    switch (kind) {
    case CONVX_ACT_RELU:
        CONVX_EW_MAP(s <= 0 ? (ET)0 : g)
        break;
    case CONVX_ACT_RELU6:
        CONVX_EW_MAP((s > 0 && s < 6) ? g : (ET)0)
        break;
    case CONVX_ACT_LEAKY_RELU:
        CONVX_EW_MAP(s > 0 ? g : g * a)
        break;
    case CONVX_ACT_ELU:
        CONVX_EW_MAP(s > 0 ? g * b : g * (s + ab))
        break;
    case CONVX_ACT_ELU_INPUT:
        CONVX_EW_MAP(s > 0 ? g * b : g * ab * CONVX_EW_EXP(s))
        break;
    case CONVX_ACT_SIGMOID:
        CONVX_EW_MAP(g * ((ET)1 - s) * s)
        break;
    case CONVX_ACT_TANH:
        CONVX_EW_MAP(g * ((ET)1 - s * s))
        break;
    case CONVX_ACT_SILU:
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            const ET s = saved[i], sigmoid = (ET)1 / ((ET)1 + CONVX_EW_EXP(-s));
            grad_in[i] = grad_out[i] * sigmoid * ((ET)1 + s * ((ET)1 - sigmoid));
        }
        break;
    case CONVX_ACT_GELU: {
        const ET half_sqrt_2_over_pi = (ET)(M_2_SQRTPI * M_SQRT1_2 * 0.5);
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            const ET s = saved[i];
            const ET cdf = (ET)0.5 * CONVX_EW_ERFC(s * (ET)-M_SQRT1_2);
            const ET pdf = CONVX_EW_EXP((ET)-0.5 * s * s) * half_sqrt_2_over_pi;
            grad_in[i] = grad_out[i] * (cdf + s * pdf);
        }
        break;
    }
    case CONVX_ACT_GELU_TANH: {
        const ET beta = (ET)(M_SQRT2 * M_2_SQRTPI * 0.5), kappa = (ET)0.044715;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            const ET s = saved[i], s2 = s * s;
            const ET t = CONVX_EW_TANH(beta * (s + kappa * s2 * s));
            const ET left = (ET)0.5 * s, right = (ET)1 + t;
            const ET right_derivative = left * ((ET)1 - t * t) * beta * ((ET)1 + (ET)3 * kappa * s2);
            grad_in[i] = grad_out[i] * ((ET)0.5 * right + right_derivative);
        }
        break;
    }
    case CONVX_ACT_HARDSWISH:
        CONVX_EW_MAP(s <= -3 ? (ET)0 : (s >= 3 ? g : g * (s / (ET)3 + (ET)0.5)))
        break;
    case CONVX_ACT_HARDSIGMOID:
        CONVX_EW_MAP((s > -3 && s < 3) ? g * (ET)(1.0 / 6.0) : (ET)0)
        break;
    case CONVX_ACT_SOFTPLUS:
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            const ET s = saved[i], z = CONVX_EW_EXP(s * a);
            grad_in[i] = s * a > b ? grad_out[i] : grad_out[i] * z / (z + (ET)1);
        }
        break;
    default:
        break;
    }
#undef CONVX_EW_MAP
}

/* Merge the planes x + k * image_stride (k < n_images, plane elements each) into one channel's
 * running figures: *count values so far (the same for every channel; not updated here), their
 * mean *mean and sum of squared deviations *m2 (Chan, Golub and LeVeque's pairwise update,
 * a block of CONVX_BN_BLOCK elements at a time, each block's own figures in two sweeps). */
CONVX_CLONES static void CONVX_EW(convx_bn_channel_moments)(const ET *CONVX_RESTRICT x, ptrdiff_t n_images,
                                                            ptrdiff_t image_stride, ptrdiff_t plane, double count,
                                                            double *mean, double *m2) {
    double total_mean = *mean, total_m2 = *m2;
    for (ptrdiff_t k = 0; k < n_images; k++) {
        const ET *src = x + k * image_stride;
        for (ptrdiff_t b0 = 0; b0 < plane; b0 += CONVX_BN_BLOCK) {
            const ptrdiff_t len = plane - b0 < CONVX_BN_BLOCK ? plane - b0 : CONVX_BN_BLOCK;
            double sum = 0, squares = 0, residual = 0;
            CONVX_SIMD_SUM(sum) for (ptrdiff_t i = 0; i < len; i++) sum += (double)src[b0 + i];
            const double rough_mean = sum / (double)len;
            /* The corrected two-pass form: the deviations' own sum corrects the mean for the
             * rounding of the first sum (whatever its order), and the squares for the offset. */
            CONVX_SIMD_SUM2(squares, residual) for (ptrdiff_t i = 0; i < len; i++) {
                const double d = (double)src[b0 + i] - rough_mean;
                squares += d * d;
                residual += d;
            }
            const double block_mean = rough_mean + residual / (double)len;
            squares -= residual * residual / (double)len;
            const double merged = count + (double)len, delta = block_mean - total_mean;
            total_mean += delta * ((double)len / merged);
            total_m2 += squares + delta * delta * (count * (double)len / merged);
            count = merged;
        }
    }
    *mean = total_mean;
    *m2 = total_m2;
}

/* The gradient that reaches a batch normalisation followed by an activation (kind >= 0): grad_out[0..n)
 * through the activation's backward at its output y into scratch; grad_out itself otherwise. Where y is
 * NULL, the output is recomputed from x as convx_bn_normalize_plane computed it, with mean, scale and
 * shift: a pass reads x and grad_out only. */
static inline const ET *CONVX_EW(convx_bn_incoming)(const ET *grad_out, const ET *x, const ET *y, int kind, double p0,
                                                    double p1, double mean, double scale, double shift, ET *scratch,
                                                    ptrdiff_t n) {
    if (kind < 0) return grad_out;
    if (y == NULL) {
        const ET m = (ET)mean, sc = (ET)scale, sh = (ET)shift;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) scratch[i] = (x[i] - m) * sc + sh;
        CONVX_EW(convx_activation_forward)(kind, scratch, scratch, n, p0, p1);
        y = scratch;
    }
    CONVX_EW(convx_activation_backward)(kind, grad_out, y, scratch, n, p0, p1);
    return scratch;
}

/* *sum_grad += sum of grad, *sum_grad_centered += sum of grad * (x - mean), over the planes of one
 * channel (laid out as in convx_bn_channel_moments), grad being grad_out taken back through the
 * activation `kind` (< 0: none) of output y first (y NULL: recomputed with scale and shift, see
 * convx_bn_incoming). */
CONVX_CLONES static void CONVX_EW(convx_bn_channel_grad_sums)(const ET *grad_out, const ET *x, const ET *y, int kind,
                                                              double p0, double p1, ptrdiff_t n_images,
                                                              ptrdiff_t image_stride, ptrdiff_t plane, double mean,
                                                              double scale, double shift, double *sum_grad,
                                                              double *sum_grad_centered) {
    ET scratch[CONVX_BN_BLOCK];
    double total = *sum_grad, total_centered = *sum_grad_centered;
    for (ptrdiff_t k = 0; k < n_images; k++) {
        for (ptrdiff_t b0 = 0; b0 < plane; b0 += CONVX_BN_BLOCK) {
            const ptrdiff_t len = plane - b0 < CONVX_BN_BLOCK ? plane - b0 : CONVX_BN_BLOCK;
            const ptrdiff_t at = k * image_stride + b0;
            const ET *CONVX_RESTRICT g = CONVX_EW(convx_bn_incoming)(grad_out + at, x + at, y ? y + at : NULL, kind,
                                                                     p0, p1, mean, scale, shift, scratch, len);
            const ET *CONVX_RESTRICT src = x + at;
            double s = 0, sc = 0;
            CONVX_SIMD_SUM(s) for (ptrdiff_t i = 0; i < len; i++) s += (double)g[i];
            CONVX_SIMD_SUM(sc) for (ptrdiff_t i = 0; i < len; i++) sc += (double)g[i] * ((double)src[i] - mean);
            total += s;
            total_centered += sc;
        }
    }
    *sum_grad = total;
    *sum_grad_centered = total_centered;
}

/* out[i] = act((x[i] - mean) * scale + shift): the normalisation, the affine map and the
 * activation `kind` (< 0: none) of one plane, a block at a time while it is in L1. */
CONVX_CLONES static void CONVX_EW(convx_bn_normalize_plane)(const ET *CONVX_RESTRICT x, ET *CONVX_RESTRICT out,
                                                            ptrdiff_t n, double mean, double scale, double shift,
                                                            int kind, double p0, double p1) {
    const ET m = (ET)mean, sc = (ET)scale, sh = (ET)shift;
    for (ptrdiff_t b0 = 0; b0 < n; b0 += CONVX_BN_BLOCK) {
        const ptrdiff_t len = n - b0 < CONVX_BN_BLOCK ? n - b0 : CONVX_BN_BLOCK;
        CONVX_SIMD for (ptrdiff_t i = b0; i < b0 + len; i++) out[i] = (x[i] - m) * sc + sh;
        if (kind >= 0) CONVX_EW(convx_activation_forward)(kind, out + b0, out + b0, len, p0, p1);
    }
}

/* grad_in[i] = k_grad * grad[i] + k_centered * (x[i] - mean) + k_0: the input gradient of one
 * plane, whichever statistics the forward used, grad as in convx_bn_channel_grad_sums. */
CONVX_CLONES static void CONVX_EW(convx_bn_input_grad_plane)(const ET *grad_out, const ET *x, const ET *y, int kind,
                                                             double p0, double p1, double scale, double shift,
                                                             ET *CONVX_RESTRICT grad_in, ptrdiff_t n, double mean,
                                                             double k_grad, double k_centered, double k_0) {
    ET scratch[CONVX_BN_BLOCK];
    const ET m = (ET)mean, kg = (ET)k_grad, kc = (ET)k_centered, k0 = (ET)k_0;
    for (ptrdiff_t b0 = 0; b0 < n; b0 += CONVX_BN_BLOCK) {
        const ptrdiff_t len = n - b0 < CONVX_BN_BLOCK ? n - b0 : CONVX_BN_BLOCK;
        const ET *CONVX_RESTRICT g = CONVX_EW(convx_bn_incoming)(grad_out + b0, x + b0, y ? y + b0 : NULL, kind, p0,
                                                                 p1, mean, scale, shift, scratch, len);
        const ET *CONVX_RESTRICT src = x + b0;
        ET *CONVX_RESTRICT dst = grad_in + b0;
        CONVX_SIMD for (ptrdiff_t i = 0; i < len; i++) dst[i] = kg * g[i] + kc * (src[i] - m) + k0;
    }
}

/* One optimizer step on n elements of a parameter, in place: the update of each optimizer of
 * convx.optim, element by element in the order of its NumPy form (which is the reference), with
 * every hyperparameter rounded to ET first, as NumPy rounds a Python float meeting an ET array.
 * h: the hyperparameters (see convx/optim.py for each kind's list); state0..2: its state arrays. */
CONVX_CLONES static void CONVX_EW(convx_optimizer_step)(int kind, ET *CONVX_RESTRICT p, const ET *CONVX_RESTRICT grad,
                                                        ET *CONVX_RESTRICT s0, ET *CONVX_RESTRICT s1,
                                                        ET *CONVX_RESTRICT s2, ptrdiff_t n, const double *h) {
    switch (kind) {
    case CONVX_OPT_SGD: {
        const ET lr = (ET)h[0], momentum = (ET)h[1], keep = (ET)(1.0 - h[2]), decay = (ET)h[3];
        const int has_momentum = h[1] != 0, nesterov = h[4] != 0, first = h[5] != 0, decays = h[3] != 0;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            ET g = grad[i];
            if (decays) g = g + decay * p[i];
            if (has_momentum) {
                const ET b = first ? g : s0[i] * momentum + keep * g;
                s0[i] = b;
                g = nesterov ? g + momentum * b : b;
            }
            p[i] = p[i] - lr * g;
        }
        break;
    }
    case CONVX_OPT_ADAM: {
        const ET keep1 = (ET)(1.0 - h[1]), beta2 = (ET)h[2], keep2 = (ET)(1.0 - h[2]), eps = (ET)h[3];
        const ET decay = (ET)h[4], shrink = (ET)(1.0 - h[0] * h[4]), step_size = (ET)h[7], root2 = (ET)h[8];
        const int decays = h[4] != 0, decoupled = h[5] != 0, amsgrad = h[6] != 0;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            ET g = grad[i], w = p[i];
            if (decays && decoupled) w = w * shrink;
            if (decays && !decoupled) g = g + decay * w;
            const ET m = s0[i] + keep1 * (g - s0[i]);
            const ET v = s1[i] * beta2 + keep2 * g * g;
            s0[i] = m;
            s1[i] = v;
            ET second = v;
            if (amsgrad) {
                const ET top = s2[i];
                second = (top != top || top > v) ? top : v;
                s2[i] = second;
            }
            const ET denom = CONVX_SQRT(second) / root2 + eps;
            p[i] = w - step_size * (m / denom);
        }
        break;
    }
    case CONVX_OPT_ADAGRAD: {
        const ET lr = (ET)h[0], decay = (ET)h[1], eps = (ET)h[2];
        const int decays = h[1] != 0;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            ET g = grad[i];
            if (decays) g = g + decay * p[i];
            const ET sum = s0[i] + g * g;
            s0[i] = sum;
            p[i] = p[i] - lr * (g / (CONVX_SQRT(sum) + eps));
        }
        break;
    }
    case CONVX_OPT_RMSPROP: {
        const ET lr = (ET)h[0], alpha = (ET)h[1], keep = (ET)(1.0 - h[1]), eps = (ET)h[2], decay = (ET)h[3];
        const ET momentum = (ET)h[4];
        const int decays = h[3] != 0, has_momentum = h[4] > 0, centered = h[5] != 0;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            ET g = grad[i];
            if (decays) g = g + decay * p[i];
            const ET v = s0[i] * alpha + keep * g * g;
            s0[i] = v;
            ET denom;
            if (centered) {
                const ET mean = s1[i] + keep * (g - s1[i]);
                s1[i] = mean;
                denom = CONVX_SQRT(v - mean * mean) + eps;
            } else {
                denom = CONVX_SQRT(v) + eps;
            }
            if (has_momentum) {
                const ET b = s2[i] * momentum + g / denom;
                s2[i] = b;
                p[i] = p[i] - lr * b;
            } else {
                p[i] = p[i] - lr * (g / denom);
            }
        }
        break;
    }
    case CONVX_OPT_ADADELTA: {
        const ET lr = (ET)h[0], rho = (ET)h[1], keep = (ET)(1.0 - h[1]), eps = (ET)h[2], decay = (ET)h[3];
        const int decays = h[3] != 0;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
            ET g = grad[i];
            if (decays) g = g + decay * p[i];
            const ET v = s0[i] * rho + keep * g * g;
            s0[i] = v;
            const ET delta = CONVX_SQRT(s1[i] + eps) / CONVX_SQRT(v + eps) * g;
            s1[i] = s1[i] * rho + keep * delta * delta;
            p[i] = p[i] - lr * delta;
        }
        break;
    }
    default:
        break;
    }
}

/* out[i] = x[i] * scale where element first + i is kept (its hash at least `threshold`), else 0:
 * dropout's forward (x the input) and backward (x the output's gradient). out may be x. */
CONVX_CLONES static void CONVX_EW(convx_dropout)(const ET *x, ET *out, ptrdiff_t n, uint64_t first, uint64_t seed,
                                                 uint32_t threshold, double scale) {
    const ET s = (ET)scale;
    CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) {
        const uint32_t h = convx_hash32(seed, first + (uint64_t)i);
        const ET scaled = x[i] * s; /* outside the select, so that it is a blend, not a branch */
        out[i] = h >= threshold ? scaled : (ET)0;
    }
}

/* out[i] = act(a[i] + b[i]), act the activation `kind` (none when negative), a block at a time
 * while it is in L1: a residual connection's sum and the activation after it. out may be a or b. */
CONVX_CLONES static void CONVX_EW(convx_add)(const ET *a, const ET *b, ET *out, ptrdiff_t n, int kind, double p0,
                                             double p1) {
    for (ptrdiff_t b0 = 0; b0 < n; b0 += CONVX_BN_BLOCK) {
        const ptrdiff_t len = n - b0 < CONVX_BN_BLOCK ? n - b0 : CONVX_BN_BLOCK;
        CONVX_SIMD for (ptrdiff_t i = b0; i < b0 + len; i++) out[i] = a[i] + b[i];
        if (kind >= 0) CONVX_EW(convx_activation_forward)(kind, out + b0, out + b0, len, p0, p1);
    }
}

/* out[p * plane + i] = x[p * plane + i] * (scale if plane first + p is kept, else 0) for p < n_planes:
 * channel dropout, one hash per plane (the product, not a select, so that NaN and inf in a dropped
 * plane give NaN as x * 0 does). out may be x. */
CONVX_CLONES static void CONVX_EW(convx_channel_dropout)(const ET *x, ET *out, ptrdiff_t n_planes, ptrdiff_t plane,
                                                         uint64_t first, uint64_t seed, uint32_t threshold,
                                                         double scale) {
    for (ptrdiff_t p = 0; p < n_planes; p++) {
        const ET factor = convx_hash32(seed, first + (uint64_t)p) >= threshold ? (ET)scale : (ET)0;
        const ET *src = x + p * plane;
        ET *dst = out + p * plane;
        CONVX_SIMD for (ptrdiff_t i = 0; i < plane; i++) dst[i] = src[i] * factor;
    }
}

/* Columns of a softmax block: at most this many, side by side in memory, handled together. */
#define CONVX_SOFTMAX_COLUMNS 64

/* Softmax (log-softmax when log_out) of one contiguous row of n: e = exp(x - max), summed in
 * double; y = e / sum, or (x - max) - log(sum). A NaN anywhere makes the sum, so the row, NaN.
 * The exponentials are stored (into y, or a block at a time into scratch) before they are summed:
 * a loop that converts them to double as it goes does not vectorise. */
CONVX_CLONES static void CONVX_EW(convx_softmax_row)(const ET *CONVX_RESTRICT x, ET *CONVX_RESTRICT y, ptrdiff_t n,
                                                     int log_out) {
    ET top = -(ET)INFINITY;
    CONVX_SIMD_MAX(top) for (ptrdiff_t i = 0; i < n; i++) top = x[i] > top ? x[i] : top;
    double sum = 0;
    if (log_out) {
        ET scratch[CONVX_BN_BLOCK];
        for (ptrdiff_t b0 = 0; b0 < n; b0 += CONVX_BN_BLOCK) {
            const ptrdiff_t len = n - b0 < CONVX_BN_BLOCK ? n - b0 : CONVX_BN_BLOCK;
            const ET *src = x + b0;
            CONVX_SIMD for (ptrdiff_t i = 0; i < len; i++) scratch[i] = CONVX_EW_EXP(src[i] - top);
            CONVX_SIMD_SUM(sum) for (ptrdiff_t i = 0; i < len; i++) sum += (double)scratch[i];
        }
        const ET log_sum = (ET)log(sum);
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - top) - log_sum;
    } else {
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) y[i] = CONVX_EW_EXP(x[i] - top);
        CONVX_SIMD_SUM(sum) for (ptrdiff_t i = 0; i < n; i++) sum += (double)y[i];
        const ET inverse = (ET)(1.0 / sum);
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) y[i] *= inverse;
    }
}

/* The softmax of convx_softmax_row along the rows of a block: width (<= CONVX_SOFTMAX_COLUMNS)
 * columns, each n elements `stride` apart, y laid out as x. */
CONVX_CLONES static void CONVX_EW(convx_softmax_columns)(const ET *CONVX_RESTRICT x, ET *CONVX_RESTRICT y,
                                                         ptrdiff_t n, ptrdiff_t stride, ptrdiff_t width,
                                                         int log_out) {
    ET top[CONVX_SOFTMAX_COLUMNS], scratch[CONVX_SOFTMAX_COLUMNS];
    double sum[CONVX_SOFTMAX_COLUMNS];
    for (ptrdiff_t j = 0; j < width; j++) {
        top[j] = -(ET)INFINITY;
        sum[j] = 0;
    }
    for (ptrdiff_t k = 0; k < n; k++) {
        const ET *row = x + k * stride;
        CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) top[j] = row[j] > top[j] ? row[j] : top[j];
    }
    for (ptrdiff_t k = 0; k < n; k++) {
        const ET *row = x + k * stride;
        ET *e = log_out ? scratch : y + k * stride;
        CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) e[j] = CONVX_EW_EXP(row[j] - top[j]);
        CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) sum[j] += (double)e[j];
    }
    ET factor[CONVX_SOFTMAX_COLUMNS];
    for (ptrdiff_t j = 0; j < width; j++) factor[j] = log_out ? (ET)log(sum[j]) : (ET)(1.0 / sum[j]);
    for (ptrdiff_t k = 0; k < n; k++) {
        const ET *row = x + k * stride;
        ET *out = y + k * stride;
        if (log_out) {
            CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) out[j] = (row[j] - top[j]) - factor[j];
        } else {
            CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) out[j] *= factor[j];
        }
    }
}

/* Input gradient of a softmax row from its output y: grad_in = y (g - sum g y), or for the
 * log-softmax g - exp(y) sum g; sums in double. */
CONVX_CLONES static void CONVX_EW(convx_softmax_backward_row)(const ET *CONVX_RESTRICT g, const ET *CONVX_RESTRICT y,
                                                              ET *CONVX_RESTRICT grad_in, ptrdiff_t n, int log_out) {
    double sum = 0;
    if (log_out) {
        CONVX_SIMD_SUM(sum) for (ptrdiff_t i = 0; i < n; i++) sum += (double)g[i];
        const ET s = (ET)sum;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) grad_in[i] = g[i] - CONVX_EW_EXP(y[i]) * s;
    } else {
        CONVX_SIMD_SUM(sum) for (ptrdiff_t i = 0; i < n; i++) sum += (double)g[i] * (double)y[i];
        const ET s = (ET)sum;
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) grad_in[i] = y[i] * (g[i] - s);
    }
}

/* convx_softmax_backward_row along the rows of a block laid out as in convx_softmax_columns. */
CONVX_CLONES static void CONVX_EW(convx_softmax_backward_columns)(const ET *CONVX_RESTRICT g,
                                                                  const ET *CONVX_RESTRICT y,
                                                                  ET *CONVX_RESTRICT grad_in, ptrdiff_t n,
                                                                  ptrdiff_t stride, ptrdiff_t width, int log_out) {
    double sum[CONVX_SOFTMAX_COLUMNS];
    ET s[CONVX_SOFTMAX_COLUMNS];
    for (ptrdiff_t j = 0; j < width; j++) sum[j] = 0;
    for (ptrdiff_t k = 0; k < n; k++) {
        const ET *gr = g + k * stride, *yr = y + k * stride;
        if (log_out) {
            CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) sum[j] += (double)gr[j];
        } else {
            CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) sum[j] += (double)gr[j] * (double)yr[j];
        }
    }
    for (ptrdiff_t j = 0; j < width; j++) s[j] = (ET)sum[j];
    for (ptrdiff_t k = 0; k < n; k++) {
        const ET *gr = g + k * stride, *yr = y + k * stride;
        ET *out = grad_in + k * stride;
        if (log_out) {
            CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) out[j] = gr[j] - CONVX_EW_EXP(yr[j]) * s[j];
        } else {
            CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) out[j] = yr[j] * (gr[j] - s[j]);
        }
    }
}

/* out[i] = (x[i] - mean) * inv_std * weight[i] + bias[i] (bias NULL: 0) over one row of a layer
 * normalisation. */
CONVX_CLONES static void CONVX_EW(convx_ln_normalize_row)(const ET *CONVX_RESTRICT x, ET *CONVX_RESTRICT out,
                                                          const ET *CONVX_RESTRICT weight,
                                                          const ET *CONVX_RESTRICT bias, ptrdiff_t n, double mean,
                                                          double inv_std) {
    const ET m = (ET)mean, r = (ET)inv_std;
    if (bias) {
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) out[i] = (x[i] - m) * r * weight[i] + bias[i];
    } else {
        CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) out[i] = (x[i] - m) * r * weight[i];
    }
}

/* *sum_wg = sum of weight[i] g[i], *sum_wg_centered = sum of weight[i] g[i] (x[i] - mean) over one
 * row of a layer normalisation (in double). */
CONVX_CLONES static void CONVX_EW(convx_ln_row_grad_sums)(const ET *CONVX_RESTRICT g, const ET *CONVX_RESTRICT x,
                                                          const ET *CONVX_RESTRICT weight, ptrdiff_t n, double mean,
                                                          double *sum_wg, double *sum_wg_centered) {
    double s = 0, sc = 0;
    CONVX_SIMD_SUM2(s, sc) for (ptrdiff_t i = 0; i < n; i++) {
        const double wg = (double)weight[i] * (double)g[i];
        s += wg;
        sc += wg * ((double)x[i] - mean);
    }
    *sum_wg = s;
    *sum_wg_centered = sc;
}

/* grad_in[i] = k_grad * weight[i] * g[i] + k_centered * (x[i] - mean) + k_0 over one row. */
CONVX_CLONES static void CONVX_EW(convx_ln_input_grad_row)(const ET *CONVX_RESTRICT g, const ET *CONVX_RESTRICT x,
                                                           const ET *CONVX_RESTRICT weight,
                                                           ET *CONVX_RESTRICT grad_in, ptrdiff_t n, double mean,
                                                           double k_grad, double k_centered, double k_0) {
    const ET m = (ET)mean, kg = (ET)k_grad, kc = (ET)k_centered, k0 = (ET)k_0;
    CONVX_SIMD for (ptrdiff_t i = 0; i < n; i++) grad_in[i] = kg * weight[i] * g[i] + kc * (x[i] - m) + k0;
}

/* grad_weight[j] += sum over rows k of g[k, j] (x[k, j] - mean[k]) inv_std[k] and grad_bias[j] +=
 * sum of g[k, j], for the columns j < width of `rows` rows `stride` apart: a layer normalisation's
 * parameter gradients over one block of columns, the rows summed in order (in double). */
CONVX_CLONES static void CONVX_EW(convx_ln_column_sums)(const ET *CONVX_RESTRICT g, const ET *CONVX_RESTRICT x,
                                                        ptrdiff_t rows, ptrdiff_t stride, ptrdiff_t width,
                                                        const double *CONVX_RESTRICT mean,
                                                        const double *CONVX_RESTRICT inv_std,
                                                        double *CONVX_RESTRICT grad_weight,
                                                        double *CONVX_RESTRICT grad_bias) {
    for (ptrdiff_t k = 0; k < rows; k++) {
        const ET *gr = g + k * stride, *xr = x + k * stride;
        const double m = mean[k], r = inv_std[k];
        CONVX_SIMD for (ptrdiff_t j = 0; j < width; j++) {
            const double gj = (double)gr[j];
            grad_bias[j] += gj;
            grad_weight[j] += gj * (((double)xr[j] - m) * r);
        }
    }
}
