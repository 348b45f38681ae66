# Activations, normalisations, softmax and dropout (C bodies in _elementwise.h).
#
# An activation splits its elements into one contiguous run per thread. Batch normalisation's
# sums over a channel run one channel per thread (each thread owns its channels' figures); its
# element-wise passes run one (image, channel) plane per thread. Group and layer normalisation
# reuse them on other views, plus row kernels for layer normalisation's element-wise weight and
# its parameter gradients a block of columns per thread (each column's rows summed in order, so
# the result does not depend on the thread count). A softmax runs one row, or one block of
# neighbouring columns, per thread. No thread writes what another reads or writes.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from "_elementwise.h" nogil:
    enum:
        CONVX_ACT_RELU
        CONVX_ACT_RELU6
        CONVX_ACT_LEAKY_RELU
        CONVX_ACT_ELU
        CONVX_ACT_ELU_INPUT
        CONVX_ACT_SIGMOID
        CONVX_ACT_TANH
        CONVX_ACT_SILU
        CONVX_ACT_GELU
        CONVX_ACT_GELU_TANH
        CONVX_ACT_HARDSWISH
        CONVX_ACT_HARDSIGMOID
        CONVX_ACT_SOFTPLUS
        CONVX_ACT_COUNT
    void convx_activation_forward_f(int kind, const float* x, float* y, Py_ssize_t n, double p0, double p1)
    void convx_activation_forward_d(int kind, const double* x, double* y, Py_ssize_t n, double p0, double p1)
    void convx_activation_backward_f(int kind, const float* grad_out, const float* saved, float* grad_in,
                                     Py_ssize_t n, double p0, double p1)
    void convx_activation_backward_d(int kind, const double* grad_out, const double* saved, double* grad_in,
                                     Py_ssize_t n, double p0, double p1)
    void convx_bn_channel_moments_f(const float* x, Py_ssize_t n_images, Py_ssize_t image_stride,
                                    Py_ssize_t plane, double count, double* mean, double* m2)
    void convx_bn_channel_moments_d(const double* x, Py_ssize_t n_images, Py_ssize_t image_stride,
                                    Py_ssize_t plane, double count, double* mean, double* m2)
    void convx_bn_channel_grad_sums_f(const float* grad_out, const float* x, const float* y, int kind, double p0,
                                      double p1, Py_ssize_t n_images, Py_ssize_t image_stride, Py_ssize_t plane,
                                      double mean, double scale, double shift, double* sum_grad,
                                      double* sum_grad_centered)
    void convx_bn_channel_grad_sums_d(const double* grad_out, const double* x, const double* y, int kind, double p0,
                                      double p1, Py_ssize_t n_images, Py_ssize_t image_stride, Py_ssize_t plane,
                                      double mean, double scale, double shift, double* sum_grad,
                                      double* sum_grad_centered)
    void convx_bn_normalize_plane_f(const float* x, float* out, Py_ssize_t n, double mean, double scale,
                                    double shift, int kind, double p0, double p1)
    void convx_bn_normalize_plane_d(const double* x, double* out, Py_ssize_t n, double mean, double scale,
                                    double shift, int kind, double p0, double p1)
    void convx_bn_input_grad_plane_f(const float* grad_out, const float* x, const float* y, int kind, double p0,
                                     double p1, double scale, double shift, float* grad_in, Py_ssize_t n,
                                     double mean, double k_grad, double k_centered, double k_0)
    void convx_bn_input_grad_plane_d(const double* grad_out, const double* x, const double* y, int kind, double p0,
                                     double p1, double scale, double shift, double* grad_in, Py_ssize_t n,
                                     double mean, double k_grad, double k_centered, double k_0)
    enum:
        CONVX_OPT_SGD
        CONVX_OPT_ADAM
        CONVX_OPT_ADAGRAD
        CONVX_OPT_RMSPROP
        CONVX_OPT_ADADELTA
    void convx_optimizer_step_f(int kind, float* p, const float* grad, float* s0, float* s1, float* s2,
                                Py_ssize_t n, const double* h)
    void convx_optimizer_step_d(int kind, double* p, const double* grad, double* s0, double* s1, double* s2,
                                Py_ssize_t n, const double* h)

    void convx_dropout_f(const float* x, float* out, Py_ssize_t n, uint64_t first, uint64_t seed,
                         uint32_t threshold, double scale)
    void convx_dropout_d(const double* x, double* out, Py_ssize_t n, uint64_t first, uint64_t seed,
                         uint32_t threshold, double scale)

    void convx_add_f(const float* a, const float* b, float* out, Py_ssize_t n, int kind, double p0, double p1)
    void convx_add_d(const double* a, const double* b, double* out, Py_ssize_t n, int kind, double p0, double p1)

    void convx_channel_dropout_f(const float* x, float* out, Py_ssize_t n_planes, Py_ssize_t plane, uint64_t first,
                                 uint64_t seed, uint32_t threshold, double scale)
    void convx_channel_dropout_d(const double* x, double* out, Py_ssize_t n_planes, Py_ssize_t plane, uint64_t first,
                                 uint64_t seed, uint32_t threshold, double scale)

    enum:
        CONVX_SOFTMAX_COLUMNS
    void convx_softmax_row_f(const float* x, float* y, Py_ssize_t n, int log_out)
    void convx_softmax_row_d(const double* x, double* y, Py_ssize_t n, int log_out)
    void convx_softmax_columns_f(const float* x, float* y, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t width,
                                 int log_out)
    void convx_softmax_columns_d(const double* x, double* y, Py_ssize_t n, Py_ssize_t stride, Py_ssize_t width,
                                 int log_out)
    void convx_softmax_backward_row_f(const float* g, const float* y, float* grad_in, Py_ssize_t n, int log_out)
    void convx_softmax_backward_row_d(const double* g, const double* y, double* grad_in, Py_ssize_t n, int log_out)
    void convx_softmax_backward_columns_f(const float* g, const float* y, float* grad_in, Py_ssize_t n,
                                          Py_ssize_t stride, Py_ssize_t width, int log_out)
    void convx_softmax_backward_columns_d(const double* g, const double* y, double* grad_in, Py_ssize_t n,
                                          Py_ssize_t stride, Py_ssize_t width, int log_out)

    void convx_ln_normalize_row_f(const float* x, float* out, const float* weight, const float* bias, Py_ssize_t n,
                                  double mean, double inv_std)
    void convx_ln_normalize_row_d(const double* x, double* out, const double* weight, const double* bias,
                                  Py_ssize_t n, double mean, double inv_std)
    void convx_ln_row_grad_sums_f(const float* g, const float* x, const float* weight, Py_ssize_t n, double mean,
                                  double* sum_wg, double* sum_wg_centered)
    void convx_ln_row_grad_sums_d(const double* g, const double* x, const double* weight, Py_ssize_t n, double mean,
                                  double* sum_wg, double* sum_wg_centered)
    void convx_ln_input_grad_row_f(const float* g, const float* x, const float* weight, float* grad_in, Py_ssize_t n,
                                   double mean, double k_grad, double k_centered, double k_0)
    void convx_ln_input_grad_row_d(const double* g, const double* x, const double* weight, double* grad_in,
                                   Py_ssize_t n, double mean, double k_grad, double k_centered, double k_0)
    void convx_ln_column_sums_f(const float* g, const float* x, Py_ssize_t rows, Py_ssize_t stride,
                                Py_ssize_t width, const double* mean, const double* inv_std, double* grad_weight,
                                double* grad_bias)
    void convx_ln_column_sums_d(const double* g, const double* x, Py_ssize_t rows, Py_ssize_t stride,
                                Py_ssize_t width, const double* mean, const double* inv_std, double* grad_weight,
                                double* grad_bias)


#: The optimizer updates the kernel knows, by class name in convx.optim.
OPTIMIZERS = {
    "SGD": CONVX_OPT_SGD,
    "Adam": CONVX_OPT_ADAM,
    "Adagrad": CONVX_OPT_ADAGRAD,
    "RMSprop": CONVX_OPT_RMSPROP,
    "Adadelta": CONVX_OPT_ADADELTA,
}

#: The activations the kernels know, by the name convx.functional gives them.
ACTIVATIONS = {
    "relu": CONVX_ACT_RELU,
    "relu6": CONVX_ACT_RELU6,
    "leaky_relu": CONVX_ACT_LEAKY_RELU,
    "elu": CONVX_ACT_ELU,
    "elu_input": CONVX_ACT_ELU_INPUT,
    "sigmoid": CONVX_ACT_SIGMOID,
    "tanh": CONVX_ACT_TANH,
    "silu": CONVX_ACT_SILU,
    "gelu": CONVX_ACT_GELU,
    "gelu_tanh": CONVX_ACT_GELU_TANH,
    "hardswish": CONVX_ACT_HARDSWISH,
    "hardsigmoid": CONVX_ACT_HARDSIGMOID,
    "softplus": CONVX_ACT_SOFTPLUS,
}


cdef enum:
    # Elements per thread below which another thread costs more to start than it saves.
    ELEMENTWISE_GRAIN = 32768
    # Columns of a layer normalisation's parameter gradients one thread sums at a time.
    LAYER_NORM_COLUMNS = 256


cdef inline int _elementwise_team(int n_threads, Py_ssize_t units, Py_ssize_t work) noexcept nogil:
    """Threads for `units` independent pieces of `work` elements in all."""
    return <int> max(1, min(<Py_ssize_t> n_threads, min(units, work // ELEMENTWISE_GRAIN)))


def activation_forward(const floating[::1] x, floating[::1] y, int kind, double p0, double p1, int n_threads):
    """y = act(x) element by element (y may share x's memory)."""
    cdef Py_ssize_t n = x.shape[0], t, begin, end
    cdef int team = _elementwise_team(n_threads, n, n)
    if n == 0:
        return
    cdef const floating* src = &x[0]
    cdef floating* dst = &y[0]
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            begin = t * n // team
            end = (t + 1) * n // team
            if floating is float:
                convx_activation_forward_f(kind, src + begin, dst + begin, end - begin, p0, p1)
            else:
                convx_activation_forward_d(kind, src + begin, dst + begin, end - begin, p0, p1)


cdef convx_epilogue* _epilogue(int kind, double p0, double p1, convx_epilogue* storage) except? NULL:
    """A convolution's activation (a kind of ACTIVATIONS with its parameters) in storage, or NULL
    for a negative kind (none)."""
    if kind >= CONVX_ACT_COUNT:
        raise ValueError(f"activation kind {kind} is none of ACTIVATIONS (0 to {CONVX_ACT_COUNT - 1}), nor negative")
    if kind < 0:
        return NULL
    storage.kind = kind
    storage.p0 = p0
    storage.p1 = p1
    return storage


cdef inline void _activate(floating* y, Py_ssize_t n, const convx_epilogue* epi) noexcept nogil:
    """y = act(y) in place, act the activation of epi."""
    if floating is float:
        convx_activation_forward_f(epi.kind, y, y, n, epi.p0, epi.p1)
    else:
        convx_activation_forward_d(epi.kind, y, y, n, epi.p0, epi.p1)


cdef void _apply_epilogue(floating* y, Py_ssize_t n, const convx_epilogue* epi, int n_threads) noexcept nogil:
    """y = act(y) in place over n elements, threaded (nothing where epi is NULL)."""
    cdef int team = _elementwise_team(n_threads, n, n), t
    if epi == NULL or n == 0:
        return
    for t in prange(team, schedule='static', num_threads=team):
        _activate(y + t * n // team, (t + 1) * n // team - t * n // team, epi)


def activation_backward(const floating[::1] grad_out, const floating[::1] saved, floating[::1] grad_in, int kind,
                        double p0, double p1, int n_threads):
    """grad_in = grad_out * act'(.) from the forward's input or output `saved` (grad_in may share
    grad_out's memory)."""
    cdef Py_ssize_t n = grad_out.shape[0], t, begin, end
    cdef int team = _elementwise_team(n_threads, n, 2 * n)
    if n == 0:
        return
    cdef const floating* g = &grad_out[0]
    cdef const floating* s = &saved[0]
    cdef floating* dst = &grad_in[0]
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            begin = t * n // team
            end = (t + 1) * n // team
            if floating is float:
                convx_activation_backward_f(kind, g + begin, s + begin, dst + begin, end - begin, p0, p1)
            else:
                convx_activation_backward_d(kind, g + begin, s + begin, dst + begin, end - begin, p0, p1)


def batch_norm_moments(const floating[:, :, ::1] x, double count, double[::1] mean, double[::1] m2, int n_threads):
    """Merge x (N, C, H*W) into each channel's running mean[c] and sum of squared deviations
    m2[c] of `count` values so far."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], plane = x.shape[2], c
    cdef int team = _elementwise_team(n_threads, channels, x.shape[0] * channels * plane)
    if n_images == 0 or plane == 0:
        return
    with nogil:
        for c in prange(channels, schedule='static', num_threads=team):
            if floating is float:
                convx_bn_channel_moments_f(&x[0, c, 0], n_images, channels * plane, plane, count, &mean[c], &m2[c])
            else:
                convx_bn_channel_moments_d(&x[0, c, 0], n_images, channels * plane, plane, count, &mean[c], &m2[c])


def batch_norm_grad_sums(const floating[:, :, ::1] grad_out, const floating[:, :, ::1] x,
                         const floating[:, :, ::1] y, int kind, double p0, double p1, const double[::1] mean,
                         const double[::1] scale, const double[::1] shift, double[::1] sum_grad,
                         double[::1] sum_grad_centered, int n_threads):
    """sum_grad[c] += sum g[:, c]; sum_grad_centered[c] += sum g[:, c] * (x[:, c] - mean[c]) over
    (N, C, H*W) arrays, g = grad_out through the backward of activation `kind` at its output y
    (kind < 0: g = grad_out, y unread); y None: the output recomputed from x as batch_norm_normalize
    computed it with mean, scale and shift (read only then)."""
    cdef Py_ssize_t n_images = x.shape[0], channels = x.shape[1], plane = x.shape[2], c
    cdef int team = _elementwise_team(n_threads, channels, 2 * x.shape[0] * channels * plane)
    if n_images == 0 or plane == 0:
        return
    cdef bint recompute = kind >= 0 and y is None
    cdef const floating* y0 = &y[0, 0, 0] if kind >= 0 and not recompute else NULL
    with nogil:
        for c in prange(channels, schedule='static', num_threads=team):
            if floating is float:
                convx_bn_channel_grad_sums_f(&grad_out[0, c, 0], &x[0, c, 0], y0 + c * plane if y0 else NULL, kind,
                                             p0, p1, n_images, channels * plane, plane, mean[c],
                                             scale[c] if recompute else 0, shift[c] if recompute else 0, &sum_grad[c],
                                             &sum_grad_centered[c])
            else:
                convx_bn_channel_grad_sums_d(&grad_out[0, c, 0], &x[0, c, 0], y0 + c * plane if y0 else NULL, kind,
                                             p0, p1, n_images, channels * plane, plane, mean[c],
                                             scale[c] if recompute else 0, shift[c] if recompute else 0, &sum_grad[c],
                                             &sum_grad_centered[c])


def batch_norm_normalize(const floating[:, :, ::1] x, floating[:, :, ::1] out, const double[::1] mean,
                         const double[::1] scale, const double[::1] shift, int kind, double p0, double p1,
                         int n_threads):
    """out[n, c] = act((x[n, c] - mean[c]) * scale[c] + shift[c]) over (N, C, H*W) arrays, act the
    activation `kind` (none when negative)."""
    cdef Py_ssize_t channels = x.shape[1], plane = x.shape[2], n_planes = x.shape[0] * channels, p, c
    cdef int team = _elementwise_team(n_threads, n_planes, 2 * n_planes * plane)
    if n_planes == 0 or plane == 0:
        return
    cdef const floating* src = &x[0, 0, 0]
    cdef floating* dst = &out[0, 0, 0]
    with nogil:
        for p in prange(n_planes, schedule='static', num_threads=team):
            c = p % channels
            if floating is float:
                convx_bn_normalize_plane_f(src + p * plane, dst + p * plane, plane, mean[c], scale[c], shift[c],
                                           kind, p0, p1)
            else:
                convx_bn_normalize_plane_d(src + p * plane, dst + p * plane, plane, mean[c], scale[c], shift[c],
                                           kind, p0, p1)


def batch_norm_input_grad(const floating[:, :, ::1] grad_out, const floating[:, :, ::1] x,
                          const floating[:, :, ::1] y, int kind, double p0, double p1, const double[::1] shift,
                          floating[:, :, ::1] grad_in, const double[::1] mean, const double[::1] k_grad,
                          const double[::1] k_centered, const double[::1] k_0, int n_threads):
    """grad_in[n, c] = k_grad[c] * g[n, c] + k_centered[c] * (x[n, c] - mean[c]) + k_0[c], g as in
    batch_norm_grad_sums, k_grad the forward's scale (y None: with shift, recompute its output)."""
    cdef Py_ssize_t channels = x.shape[1], plane = x.shape[2], n_planes = x.shape[0] * channels, p, c
    cdef int team = _elementwise_team(n_threads, n_planes, 3 * n_planes * plane)
    if n_planes == 0 or plane == 0:
        return
    cdef const floating* g = &grad_out[0, 0, 0]
    cdef const floating* src = &x[0, 0, 0]
    cdef bint recompute = kind >= 0 and y is None
    cdef const floating* y0 = &y[0, 0, 0] if kind >= 0 and not recompute else NULL
    cdef floating* dst = &grad_in[0, 0, 0]
    with nogil:
        for p in prange(n_planes, schedule='static', num_threads=team):
            c = p % channels
            if floating is float:
                convx_bn_input_grad_plane_f(g + p * plane, src + p * plane, y0 + p * plane if y0 else NULL, kind,
                                            p0, p1, k_grad[c], shift[c] if recompute else 0, dst + p * plane, plane,
                                            mean[c], k_grad[c], k_centered[c], k_0[c])
            else:
                convx_bn_input_grad_plane_d(g + p * plane, src + p * plane, y0 + p * plane if y0 else NULL, kind,
                                            p0, p1, k_grad[c], shift[c] if recompute else 0, dst + p * plane, plane,
                                            mean[c], k_grad[c], k_centered[c], k_0[c])


cdef inline floating* _state_pointer(floating[::1] state) noexcept nogil:
    return &state[0] if state.shape[0] > 0 else NULL


def optimizer_step(int kind, floating[::1] param, const floating[::1] grad, floating[::1] state0,
                   floating[::1] state1, floating[::1] state2, const double[::1] hyper, int n_threads):
    """One update of `param` in place from `grad` and the state arrays the optimizer `kind` keeps
    (each either param's size or empty when unused); hyper: its hyperparameters."""
    cdef Py_ssize_t n = param.shape[0], t, begin, end
    cdef int team = _elementwise_team(n_threads, n, 4 * n)
    if n == 0:
        return
    cdef floating* p = &param[0]
    cdef const floating* g = &grad[0]
    cdef floating* s0 = _state_pointer(state0)
    cdef floating* s1 = _state_pointer(state1)
    cdef floating* s2 = _state_pointer(state2)
    cdef const double* h = &hyper[0]
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            begin = t * n // team
            end = (t + 1) * n // team
            if floating is float:
                convx_optimizer_step_f(kind, p + begin, g + begin, s0 + begin if s0 else NULL,
                                       s1 + begin if s1 else NULL, s2 + begin if s2 else NULL, end - begin, h)
            else:
                convx_optimizer_step_d(kind, p + begin, g + begin, s0 + begin if s0 else NULL,
                                       s1 + begin if s1 else NULL, s2 + begin if s2 else NULL, end - begin, h)


def dropout(const floating[::1] x, floating[::1] out, uint64_t first, uint64_t seed, uint32_t threshold,
            double scale, int n_threads):
    """out[i] = x[i] * scale where hash(seed, first + i) >= threshold, else 0 (out may share x's memory)."""
    cdef Py_ssize_t n = x.shape[0], t, begin, end
    cdef int team = _elementwise_team(n_threads, n, 2 * n)
    if n == 0:
        return
    cdef const floating* src = &x[0]
    cdef floating* dst = &out[0]
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            begin = t * n // team
            end = (t + 1) * n // team
            if floating is float:
                convx_dropout_f(src + begin, dst + begin, end - begin, first + <uint64_t> begin, seed, threshold, scale)
            else:
                convx_dropout_d(src + begin, dst + begin, end - begin, first + <uint64_t> begin, seed, threshold, scale)


def add(const floating[::1] a, const floating[::1] b, floating[::1] out, int kind, double p0, double p1,
        int n_threads):
    """out = act(a + b) element by element (act none for a negative kind; out may share a's or b's memory)."""
    cdef Py_ssize_t n = a.shape[0], t, begin, end
    cdef int team = _elementwise_team(n_threads, n, 3 * n)
    if n == 0:
        return
    cdef const floating* pa = &a[0]
    cdef const floating* pb = &b[0]
    cdef floating* dst = &out[0]
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            begin = t * n // team
            end = (t + 1) * n // team
            if floating is float:
                convx_add_f(pa + begin, pb + begin, dst + begin, end - begin, kind, p0, p1)
            else:
                convx_add_d(pa + begin, pb + begin, dst + begin, end - begin, kind, p0, p1)


def channel_dropout(const floating[:, ::1] x, floating[:, ::1] out, uint64_t first, uint64_t seed,
                    uint32_t threshold, double scale, int n_threads):
    """out[p] = x[p] * (scale if hash(seed, first + p) >= threshold else 0) for each plane (row) p
    (out may share x's memory)."""
    cdef Py_ssize_t n_planes = x.shape[0], plane = x.shape[1], t, begin, end
    cdef int team = _elementwise_team(n_threads, n_planes, 2 * n_planes * plane)
    if n_planes == 0 or plane == 0:
        return
    cdef const floating* src = &x[0, 0]
    cdef floating* dst = &out[0, 0]
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            begin = t * n_planes // team
            end = (t + 1) * n_planes // team
            if floating is float:
                convx_channel_dropout_f(src + begin * plane, dst + begin * plane, end - begin, plane,
                                        first + <uint64_t> begin, seed, threshold, scale)
            else:
                convx_channel_dropout_d(src + begin * plane, dst + begin * plane, end - begin, plane,
                                        first + <uint64_t> begin, seed, threshold, scale)


def softmax_forward(const floating[:, :, ::1] x, floating[:, :, ::1] y, bint log_out, int n_threads):
    """y[o, :, i] = softmax(x[o, :, i]) (log_softmax when log_out) over (outer, length, inner) arrays."""
    cdef Py_ssize_t outer = x.shape[0], length = x.shape[1], inner = x.shape[2], u, o, b, width
    cdef Py_ssize_t blocks = (inner + CONVX_SOFTMAX_COLUMNS - 1) // CONVX_SOFTMAX_COLUMNS
    cdef Py_ssize_t units = outer if inner == 1 else outer * blocks
    cdef int team = _elementwise_team(n_threads, units, 3 * outer * length * inner)
    if outer == 0 or length == 0 or inner == 0:
        return
    cdef const floating* src = &x[0, 0, 0]
    cdef floating* dst = &y[0, 0, 0]
    with nogil:
        if inner == 1:
            for o in prange(outer, schedule='static', num_threads=team):
                if floating is float:
                    convx_softmax_row_f(src + o * length, dst + o * length, length, log_out)
                else:
                    convx_softmax_row_d(src + o * length, dst + o * length, length, log_out)
        else:
            for u in prange(units, schedule='static', num_threads=team):
                o = u // blocks
                b = (u % blocks) * CONVX_SOFTMAX_COLUMNS
                width = min(<Py_ssize_t> CONVX_SOFTMAX_COLUMNS, inner - b)
                if floating is float:
                    convx_softmax_columns_f(src + o * length * inner + b, dst + o * length * inner + b, length, inner,
                                            width, log_out)
                else:
                    convx_softmax_columns_d(src + o * length * inner + b, dst + o * length * inner + b, length, inner,
                                            width, log_out)


def softmax_backward(const floating[:, :, ::1] grad_out, const floating[:, :, ::1] y, floating[:, :, ::1] grad_in,
                     bint log_out, int n_threads):
    """grad_in = y * (g - sum g y), or g - exp(y) * sum g when log_out, the sums along axis 1 of
    (outer, length, inner) arrays, y the forward's output."""
    cdef Py_ssize_t outer = y.shape[0], length = y.shape[1], inner = y.shape[2], u, o, b, width, at
    cdef Py_ssize_t blocks = (inner + CONVX_SOFTMAX_COLUMNS - 1) // CONVX_SOFTMAX_COLUMNS
    cdef Py_ssize_t units = outer if inner == 1 else outer * blocks
    cdef int team = _elementwise_team(n_threads, units, 3 * outer * length * inner)
    if outer == 0 or length == 0 or inner == 0:
        return
    cdef const floating* g = &grad_out[0, 0, 0]
    cdef const floating* src = &y[0, 0, 0]
    cdef floating* dst = &grad_in[0, 0, 0]
    with nogil:
        if inner == 1:
            for o in prange(outer, schedule='static', num_threads=team):
                if floating is float:
                    convx_softmax_backward_row_f(g + o * length, src + o * length, dst + o * length, length, log_out)
                else:
                    convx_softmax_backward_row_d(g + o * length, src + o * length, dst + o * length, length, log_out)
        else:
            for u in prange(units, schedule='static', num_threads=team):
                o = u // blocks
                b = (u % blocks) * CONVX_SOFTMAX_COLUMNS
                width = min(<Py_ssize_t> CONVX_SOFTMAX_COLUMNS, inner - b)
                at = o * length * inner + b
                if floating is float:
                    convx_softmax_backward_columns_f(g + at, src + at, dst + at, length, inner, width, log_out)
                else:
                    convx_softmax_backward_columns_d(g + at, src + at, dst + at, length, inner, width, log_out)


cdef inline const floating* _optional_pointer(const floating[::1] values) noexcept nogil:
    return &values[0] if values.shape[0] > 0 else NULL


def layer_norm_normalize(const floating[:, ::1] x, floating[:, ::1] out, const double[::1] mean,
                         const double[::1] inv_std, const floating[::1] weight, const floating[::1] bias,
                         int n_threads):
    """out[m] = (x[m] - mean[m]) * inv_std[m] * weight + bias for each row m of (M, K) arrays
    (bias empty: none)."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], m
    cdef int team = _elementwise_team(n_threads, rows, 2 * rows * n)
    if rows == 0 or n == 0:
        return
    cdef const floating* w = &weight[0]
    cdef const floating* b = _optional_pointer(bias)
    with nogil:
        for m in prange(rows, schedule='static', num_threads=team):
            if floating is float:
                convx_ln_normalize_row_f(&x[m, 0], &out[m, 0], w, b, n, mean[m], inv_std[m])
            else:
                convx_ln_normalize_row_d(&x[m, 0], &out[m, 0], w, b, n, mean[m], inv_std[m])


def layer_norm_row_sums(const floating[:, ::1] grad_out, const floating[:, ::1] x, const floating[::1] weight,
                        const double[::1] mean, double[::1] sum_wg, double[::1] sum_wg_centered, int n_threads):
    """sum_wg[m] = sum weight * grad_out[m]; sum_wg_centered[m] = sum weight * grad_out[m] * (x[m] - mean[m])
    over each row m of (M, K) arrays."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], m
    cdef int team = _elementwise_team(n_threads, rows, 2 * rows * n)
    if rows == 0 or n == 0:
        return
    cdef const floating* w = &weight[0]
    with nogil:
        for m in prange(rows, schedule='static', num_threads=team):
            if floating is float:
                convx_ln_row_grad_sums_f(&grad_out[m, 0], &x[m, 0], w, n, mean[m], &sum_wg[m], &sum_wg_centered[m])
            else:
                convx_ln_row_grad_sums_d(&grad_out[m, 0], &x[m, 0], w, n, mean[m], &sum_wg[m], &sum_wg_centered[m])


def layer_norm_input_grad(const floating[:, ::1] grad_out, const floating[:, ::1] x, const floating[::1] weight,
                          floating[:, ::1] grad_in, const double[::1] mean, const double[::1] k_grad,
                          const double[::1] k_centered, const double[::1] k_0, int n_threads):
    """grad_in[m] = k_grad[m] * weight * grad_out[m] + k_centered[m] * (x[m] - mean[m]) + k_0[m] per row
    of (M, K) arrays."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], m
    cdef int team = _elementwise_team(n_threads, rows, 3 * rows * n)
    if rows == 0 or n == 0:
        return
    cdef const floating* w = &weight[0]
    with nogil:
        for m in prange(rows, schedule='static', num_threads=team):
            if floating is float:
                convx_ln_input_grad_row_f(&grad_out[m, 0], &x[m, 0], w, &grad_in[m, 0], n, mean[m], k_grad[m],
                                          k_centered[m], k_0[m])
            else:
                convx_ln_input_grad_row_d(&grad_out[m, 0], &x[m, 0], w, &grad_in[m, 0], n, mean[m], k_grad[m],
                                          k_centered[m], k_0[m])


def layer_norm_param_grads(const floating[:, ::1] grad_out, const floating[:, ::1] x, const double[::1] mean,
                           const double[::1] inv_std, double[::1] grad_weight, double[::1] grad_bias,
                           int n_threads):
    """grad_weight += sum over rows m of grad_out[m] * (x[m] - mean[m]) * inv_std[m]; grad_bias +=
    sum of grad_out[m], over (M, K) arrays; each column's rows summed in order, whatever the
    thread count."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], u, b
    cdef Py_ssize_t blocks = (n + LAYER_NORM_COLUMNS - 1) // LAYER_NORM_COLUMNS
    cdef int team = _elementwise_team(n_threads, blocks, 2 * rows * n)
    if rows == 0 or n == 0:
        return
    cdef const floating* g = &grad_out[0, 0]
    cdef const floating* src = &x[0, 0]
    with nogil:
        for u in prange(blocks, schedule='static', num_threads=team):
            b = u * LAYER_NORM_COLUMNS
            if floating is float:
                convx_ln_column_sums_f(g + b, src + b, rows, n, min(<Py_ssize_t> LAYER_NORM_COLUMNS, n - b), &mean[0],
                                       &inv_std[0], &grad_weight[b], &grad_bias[b])
            else:
                convx_ln_column_sums_d(g + b, src + b, rows, n, min(<Py_ssize_t> LAYER_NORM_COLUMNS, n - b), &mean[0],
                                       &inv_std[0], &grad_weight[b], &grad_bias[b])
