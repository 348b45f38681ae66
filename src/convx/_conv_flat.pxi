# 1x1 convolutions over whole planes (convx_flat_* in _flat_body.h).

cdef enum:
    # Pixels per plane from which the flat kernels take a 1x1 convolution's forward and input
    # gradient, and its weight gradient. Their strips and chunks end with each plane, where the
    # packed path's run on into the next image, and each strip streams the whole weight: on
    # 14x14 planes (256 -> 1024 channels) they took 1.2-1.3x the packed path's time, on 28x28
    # 0.85-0.96 (the weight gradient 1.0-1.24), on 56x56 0.74-0.83. The float64 weight gradient
    # took 0.99-1.12 on 56x56, and stays on the packed path.
    FLAT_LEAST_PIXELS = 512
    FLAT_WEIGHT_LEAST_PIXELS = 2048
    # Outputs of at least this many bytes are streamed past the caches.
    FLAT_STREAM_BYTES = 16 << 20


cdef inline bint _flat_choice(convx_conv_shape* s, Py_ssize_t batch, bint weight, bint is_float) noexcept nogil:
    """Whether the convx_flat_* kernels take the convolution of shape s (its forward and input
    gradient, or with weight its weight gradient): a 1x1 kernel over whole planes, on convx's
    own kernels."""
    if _level() == CONVX_GEMM_BLAS or batch == 0 or s.c_out_g == 0 or s.c_in_g == 0 or not convx_conv_flat(s):
        return False
    if _dmode() == MODE_FLAT:
        return True
    if _dmode() != MODE_AUTO or (weight and not is_float):
        return False
    return s.height * s.width >= (FLAT_WEIGHT_LEAST_PIXELS if weight else FLAT_LEAST_PIXELS)


cdef int _flat_conv(const floating* b, const floating[:, :, :, ::1] weight, bint transpose, const floating* bias,
                    const convx_epilogue* epi, floating* c, convx_conv_shape* s, Py_ssize_t batch,
                    int n_threads) except -1:
    """C = op(W) @ B plane by plane by convx_flat_conv, for a shape _flat_choice took: the
    forward (B = x, C = out, op(W) = W, with the bias and the activation of epi) or the input
    gradient (B = grad_out, C = grad_in, op(W) = W^T, transpose). Threads take equal shares of
    the planes' strips."""
    cdef WeightProduct product
    cdef WeightProduct* wp = &product
    packed = _pack_weight(weight, s.groups, transpose, wp)
    cdef Py_ssize_t n_pix = s.height * s.width, strips, items, work_size, lo, hi
    cdef Py_ssize_t b_image = s.groups * wp.k * n_pix, c_image = s.groups * wp.m * n_pix
    cdef int team, t
    cdef int stream = batch * c_image * <Py_ssize_t> sizeof(floating) >= FLAT_STREAM_BYTES
    if floating is float:
        strips = convx_flat_strips_f(wp.level, c, n_pix, stream)
        work_size = convx_flat_work_size_f(wp.level)
        dtype = np.float32
    else:
        strips = convx_flat_strips_d(wp.level, c, n_pix, stream)
        work_size = convx_flat_work_size_d(wp.level)
        dtype = np.float64
    items = batch * s.groups * strips
    team = _team(n_threads, items)
    cdef floating[::1] work = np.empty(team * work_size, dtype=dtype)
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            lo = t * items // team
            hi = (t + 1) * items // team
            if floating is float:
                convx_flat_conv_f(wp.level, s.groups, wp.m, wp.k, n_pix, <const float*> wp.packed, wp.group_size,
                                  bias, epi, b, b_image, c, c_image, stream, lo, hi, &work[t * work_size])
            else:
                convx_flat_conv_d(wp.level, s.groups, wp.m, wp.k, n_pix, <const double*> wp.packed, wp.group_size,
                                  bias, epi, b, b_image, c, c_image, stream, lo, hi, &work[t * work_size])
    return 0


cdef int _flat_weight_gradient(const floating* grad_out, const floating* x, convx_conv_shape* s, Py_ssize_t batch,
                               floating* grad_weight, int n_threads) except -1:
    """grad_weight = sum over the batch's pixels of grad_out x x^T by convx_flat_weight, for a
    shape _flat_choice took. Threads take equal shares of the batch, each summing its own
    partial, or, for fewer images than threads, of the blocks of input channels (each
    writing its own elements and reading all of grad_out)."""
    cdef int level = _level(), team, t
    cdef Py_ssize_t n_pix = s.height * s.width, items, lo, hi, n0, n1
    cdef Py_ssize_t w_size = s.groups * s.c_out_g * s.c_in_g
    cdef Py_ssize_t image_in = s.groups * s.c_in_g * n_pix, image_out = s.groups * s.c_out_g * n_pix
    if floating is float:
        items = s.groups * convx_flat_weight_blocks_f(level, s.c_in_g)
        dtype = np.float32
    else:
        items = s.groups * convx_flat_weight_blocks_d(level, s.c_in_g)
        dtype = np.float64
    cdef bint by_images = batch >= n_threads
    team = _team(n_threads, batch if by_images else items)
    cdef floating[::1] parts = np.empty(team * w_size if by_images else 1, dtype=dtype)
    cdef floating* dst
    with nogil:
        for t in prange(team, schedule='static', num_threads=team):
            lo = 0 if by_images else t * items // team
            hi = items if by_images else (t + 1) * items // team
            n0 = t * batch // team if by_images else 0
            n1 = (t + 1) * batch // team if by_images else batch
            dst = &parts[t * w_size] if by_images else grad_weight
            if floating is float:
                convx_flat_weight_f(level, s.groups, s.c_out_g, s.c_in_g, n_pix, n1 - n0, grad_out + n0 * image_out,
                                    x + n0 * image_in, dst, lo, hi)
            else:
                convx_flat_weight_d(level, s.groups, s.c_out_g, s.c_in_g, n_pix, n1 - n0, grad_out + n0 * image_out,
                                    x + n0 * image_in, dst, lo, hi)
        if by_images:
            _sum_partials(&parts[0], team, w_size, grad_weight)
    return 1
