# Convolution kernels: im2col/col2im + GEMM (Caffe's scheme), convx's packed GEMM, and the
# flat, plane-wise and channels-last direct kernels (depthwise convolutions: _depthwise.pxi).
#
# The GEMMs are convx's own packed kernels (_gemm.h) where the CPU has them, else BLAS. With
# convx's, the forward (and, for layers it suits, the weight gradient) packs column blocks
# straight from the input, each thread taking an equal share of the batch's output pixels; the
# input gradient (with enough input channels) adds each tile of W^T @ grad_out straight into
# grad_in, each thread taking an equal share of the input channels. Otherwise work is split
# into tiles: one image (or a chunk of its output rows, when its column
# matrix would exceed the per-thread budget), or a block of whole images when their planes are
# so small that one GEMM per image would be too thin for BLAS to run well. Column buffers hold
# one tile per thread, never the whole batch. Threads split the tiles; each has its own
# scratch, and weight gradients are accumulated in per-thread partials summed afterwards.
#
# The algorithms live in the files included here; this file holds the entry points, which
# validate nothing (functional/conv.py did), ask _conv_select.pxi which implementation runs,
# and run it.

include "_conv_base.pxi"

cdef enum:
    # rows of a block of conv2d_backward_bias_channels_last's sums
    BIAS_ROWS = 256
include "_conv_packed.pxi"
include "_conv_flat.pxi"
include "_conv_plane.pxi"
include "_conv_direct.pxi"
include "_conv_im2col.pxi"
include "_conv_select.pxi"


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                   const floating[::1] bias, floating[:, :, :, ::1] out,
                   int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                   int groups, int n_threads, int activation=-1, double p0=0, double p1=0):
    """out[n, co] = act(bias[co] + sum_{ci in group(co), i, j} w[co, ci, i, j] * x_padded[n, ci, oh*s + i*d, ow*s + j*d]),
    act the activation of activation_forward's kind `activation` with parameters p0, p1 (none where
    it is negative): the direct and flat kernels apply it to each register tile, the packed GEMM
    to each block of columns, im2col to each chunk of rows, the plane kernel to the whole output."""
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], weight.shape[0],
                                    weight.shape[2], weight.shape[3], out.shape[2], out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    _split_rows(&g, n_threads)
    cdef Py_ssize_t col_size = _col_size(&g), gathered_size = _gathered_size(&g)
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t c_out = out.shape[1]
    cdef Py_ssize_t n_chunks = (g.out_h + g.chunk_rows - 1) // g.chunk_rows
    cdef Py_ssize_t n_blocks = _n_blocks(&g, n_threads)
    cdef Py_ssize_t item, n, n_images, row0, row1, b, c, p, tid
    cdef bint has_bias = bias.shape[0] > 0
    cdef floating* out_b
    cdef convx_conv_shape shape = _conv_shape(&g)
    cdef int impl = _forward_impl(&shape, g.batch, floating is float), level = _level()
    cdef convx_epilogue epilogue
    cdef convx_epilogue* epi = _epilogue(activation, p0, p1, &epilogue)
    cdef Py_ssize_t n_total = g.batch * c_out * n_out
    if impl == IMPL_FLAT:
        _ran(OP_FORWARD, impl, level)
        _flat_conv(&x[0, 0, 0, 0], weight, False, &bias[0] if has_bias else NULL, epi, &out[0, 0, 0, 0], &shape,
                   g.batch, n_threads)
        return
    if impl == IMPL_PLANE:
        _ran(OP_FORWARD, impl, level)
        _plane_conv(&x[0, 0, 0, 0], &weight[0, 0, 0, 0], &bias[0] if has_bias else NULL, &out[0, 0, 0, 0], &shape,
                    g.batch, n_threads)
        _apply_epilogue(&out[0, 0, 0, 0] if n_total else NULL, n_total, epi, n_threads)
        return
    cdef Py_ssize_t taps = g.kernel_h * g.kernel_w
    if (impl == IMPL_DIRECT_ROWS or impl == IMPL_DIRECT_IMAGES) and _direct_conv(
            &x[0, 0, 0, 0], &weight[0, 0, 0, 0], g.c_out_g * g.col_rows, g.col_rows, taps, 1,
            &bias[0] if has_bias else NULL, epi, &out[0, 0, 0, 0], &shape, g.batch, n_threads,
            DIRECT_ROWS if impl == IMPL_DIRECT_ROWS else DIRECT_IMAGES):
        _ran(OP_FORWARD, impl, level)
        return
    cdef WeightProduct wp
    packed = _pack_weight(weight, groups, False, &wp)
    _ran(OP_FORWARD, IMPL_IM2COL if wp.level == CONVX_GEMM_BLAS else IMPL_PACKED, wp.level)
    if wp.level != CONVX_GEMM_BLAS:
        _implicit_conv(&x[0, 0, 0, 0] if g.batch else NULL, &wp, &bias[0] if has_bias else NULL, epi,
                       &out[0, 0, 0, 0] if g.batch else NULL, &shape, g.batch, n_threads)
        return
    n_threads = max(1, min(n_threads, n_blocks * n_chunks))
    dtype = np.asarray(out).dtype
    cdef floating[::1] col = np.empty(n_threads * col_size, dtype=dtype)
    cdef floating[::1] gathered = np.empty(n_threads * gathered_size, dtype=dtype)
    with _blas_limit(True):
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            for item in prange(n_blocks * n_chunks, schedule='static'):
                n = _block_start(&g, item // n_chunks, n_blocks)
                n_images = _block_start(&g, item // n_chunks + 1, n_blocks) - n
                row0 = (item % n_chunks) * g.chunk_rows
                row1 = min(row0 + g.chunk_rows, g.out_h)
                _forward_tile(&x[n, 0, 0, 0], &weight[0, 0, 0, 0], &out[n, 0, 0, 0], &g, n_images, row0, row1,
                              &col[tid * col_size], &gathered[tid * gathered_size])
                if has_bias:
                    for b in range(n_images):
                        out_b = &out[n + b, 0, 0, 0]
                        for c in range(c_out):
                            for p in range(row0 * g.out_w, row1 * g.out_w):
                                out_b[c * n_out + p] += bias[c]
                if epi != NULL:
                    for b in range(n_images):
                        out_b = &out[n + b, 0, 0, 0]
                        for c in range(c_out):
                            _activate(out_b + c * n_out + row0 * g.out_w, (row1 - row0) * g.out_w, epi)


def conv2d_forward_channels_last(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] weight,
                                 const floating[::1] bias, floating[:, :, :, ::1] out,
                                 int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                                 int groups, int n_threads, int activation=-1, double p0=0, double p1=0):
    """conv2d_forward of channels-last x (N, H, W, C_in) into channels-last out (N, H_out, W_out,
    C_out), where the direct kernels take it (they read and write that layout themselves, and apply
    the activation to each tile); returns whether they did (else out is untouched)."""
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[3], x.shape[1], x.shape[2], weight.shape[0],
                                    weight.shape[2], weight.shape[3], out.shape[1], out.shape[2], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef convx_conv_shape shape = _conv_shape(&g)
    cdef int mode = _direct_choice(&shape, g.batch, floating is float, True), level = _level()
    cdef convx_epilogue epilogue
    cdef convx_epilogue* epi = _epilogue(activation, p0, p1, &epilogue)
    if mode == DIRECT_OFF:
        return False
    shape.x_last = 1
    shape.out_last = 1
    if not _direct_conv(&x[0, 0, 0, 0], &weight[0, 0, 0, 0], g.c_out_g * g.col_rows, g.col_rows,
                        g.kernel_h * g.kernel_w, 1, &bias[0] if bias.shape[0] > 0 else NULL, epi,
                        &out[0, 0, 0, 0], &shape, g.batch, n_threads, mode):
        return False
    _ran(OP_FORWARD, IMPL_DIRECT_ROWS if mode == DIRECT_ROWS else IMPL_DIRECT_IMAGES, level)
    return True


def conv2d_backward_input_channels_last(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] weight,
                                        floating[:, :, :, ::1] grad_in, int stride_h, int stride_w, int pad_h,
                                        int pad_w, int dilation_h, int dilation_w, int groups, int n_threads):
    """conv2d_backward_input of channels-last grad_out (N, H_out, W_out, C_out) into channels-last
    grad_in (N, H, W, C_in), where the direct kernels take it (a strided convolution phase by phase);
    returns whether they did (else grad_in is untouched)."""
    cdef ConvGeometry g = _geometry(grad_in.shape[0], grad_in.shape[3], grad_in.shape[1], grad_in.shape[2],
                                    weight.shape[0], weight.shape[2], weight.shape[3],
                                    grad_out.shape[1], grad_out.shape[2], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef convx_conv_shape adjoint
    cdef int mode, level = _level()
    if _transposed_wanted(&g, floating is float):
        _ran(OP_INPUT, IMPL_IM2COL, _transposed_input_gradient(grad_out, weight, grad_in, &g, n_threads))
        return True
    if g.batch and (stride_h > 1 or stride_w > 1):
        if not _phased_input_gradient(grad_out, weight, grad_in, &g, n_threads, &mode):
            return False
        _ran(OP_INPUT, IMPL_DIRECT_ROWS if mode == DIRECT_ROWS else IMPL_DIRECT_IMAGES, level)
        return True
    mode = _direct_input_mode(&g, &adjoint, floating is float, True) if g.batch else DIRECT_OFF
    if mode == DIRECT_OFF or not _direct_input_gradient(&grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0],
                                                        &grad_in[0, 0, 0, 0], &g, &adjoint, n_threads, mode):
        return False
    _ran(OP_INPUT, IMPL_DIRECT_ROWS if mode == DIRECT_ROWS else IMPL_DIRECT_IMAGES, level)
    return True


def conv2d_backward_weight_channels_last(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                                         floating[:, :, :, ::1] grad_weight, int stride_h, int stride_w, int pad_h,
                                         int pad_w, int dilation_h, int dilation_w, int groups, int n_threads):
    """grad_weight (overwritten) of channels-last grad_out (N, H_out, W_out, C_out) and x (N, H, W,
    C_in), where the direct kernels take it; returns whether they did (else grad_weight holds
    garbage: a result not finite is recomputed by the caller on a path that multiplies the padding)."""
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[3], x.shape[1], x.shape[2], grad_weight.shape[0],
                                    grad_weight.shape[2], grad_weight.shape[3], grad_out.shape[1], grad_out.shape[2],
                                    groups, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef convx_conv_shape shape = _conv_shape(&g)
    cdef int split = _direct_weight_choice(&shape, g.batch, floating is float, n_threads, True), level = _level()
    cdef bint done
    if split == DIRECT_OFF or g.groups * g.c_out_g * g.col_rows == 0:
        return False
    shape.x_last = 1
    shape.out_last = 1
    if split == DIRECT_OUTER:
        done = _direct_outer_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch,
                                             &grad_weight[0, 0, 0, 0], n_threads)
        _ran(OP_WEIGHT, IMPL_DIRECT_OUTER, level)
    else:
        done = _direct_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch,
                                       &grad_weight[0, 0, 0, 0], n_threads, split)
        _ran(OP_WEIGHT, IMPL_DIRECT_BY_IMAGES if split == DIRECT_BY_IMAGES else IMPL_DIRECT_BY_CHANNELS, level)
    return done


def conv2d_backward_input(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] weight,
                          floating[:, :, :, ::1] grad_in,
                          int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                          int groups, int n_threads):
    """grad_in = col2im(W^T @ grad_out): the full correlation of grad_out (dilated by the stride) with the flipped kernel."""
    cdef ConvGeometry g = _geometry(grad_in.shape[0], grad_in.shape[1], grad_in.shape[2], grad_in.shape[3],
                                    weight.shape[0], weight.shape[2], weight.shape[3],
                                    grad_out.shape[2], grad_out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t col_size = _col_size(&g), gathered_size = _gathered_size(&g)
    cdef Py_ssize_t n_blocks = _n_blocks(&g, n_threads)
    cdef Py_ssize_t item, n, tid
    cdef convx_conv_shape shape = _conv_shape(&g), adjoint
    cdef int impl = _input_impl(&g, &shape, &adjoint, floating is float, n_threads), level = _level()
    if impl == IMPL_FLAT:
        _ran(OP_INPUT, impl, level)
        _flat_conv(&grad_out[0, 0, 0, 0], weight, True, NULL, NULL, &grad_in[0, 0, 0, 0], &shape, g.batch, n_threads)
        return
    if (impl == IMPL_DIRECT_ROWS or impl == IMPL_DIRECT_IMAGES) and _direct_input_gradient(
            &grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0], &grad_in[0, 0, 0, 0], &g, &adjoint, n_threads,
            DIRECT_ROWS if impl == IMPL_DIRECT_ROWS else DIRECT_IMAGES):
        _ran(OP_INPUT, impl, level)
        return
    if impl != IMPL_IM2COL and _packed_input(&g, n_threads):
        _ran(OP_INPUT, IMPL_PACKED, level)
        _packed_input_gradient(&grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0], &grad_in[0, 0, 0, 0], &shape, g.batch,
                               n_threads)
        return
    cdef WeightProduct wp
    packed = _pack_weight(weight, groups, True, &wp)
    _ran(OP_INPUT, IMPL_IM2COL, wp.level)
    cdef Py_ssize_t work_size = _product_work_size(&wp, floating is float)
    n_threads = max(1, min(n_threads, n_blocks))
    dtype = np.asarray(grad_in).dtype
    cdef floating[::1] col = np.empty(n_threads * col_size, dtype=dtype)
    cdef floating[::1] gathered = np.empty(n_threads * gathered_size, dtype=dtype)
    cdef floating[::1] work = np.empty(n_threads * work_size, dtype=dtype)
    with _blas_limit(wp.level == CONVX_GEMM_BLAS):
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            for item in prange(n_blocks, schedule='static'):
                n = _block_start(&g, item, n_blocks)
                _backward_input_tile(&grad_out[n, 0, 0, 0], &wp, &grad_in[n, 0, 0, 0], &g,
                                     _block_start(&g, item + 1, n_blocks) - n, &col[tid * col_size],
                                     &gathered[tid * gathered_size], &work[tid * work_size])


def conv2d_backward_params(const floating[:, :, :, ::1] grad_out, const floating[:, :, :, ::1] x,
                           const floating[:, :, :, ::1] weight,
                           floating[:, :, :, ::1] grad_in, floating[:, :, :, ::1] grad_weight,
                           floating[::1] grad_bias,
                           int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w,
                           int groups, int n_threads):
    """grad_weight = sum_n grad_out[n] @ im2col(x[n])^T, grad_bias = sum_{n, h, w} grad_out,
    and, when grad_in has a batch, grad_in = col2im(W^T @ grad_out), in one pass over the batch.

    ``grad_weight`` and ``grad_bias`` are overwritten; a zero-length ``grad_bias`` or
    zero-batch ``grad_in`` skips that gradient.
    """
    cdef ConvGeometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], grad_weight.shape[0],
                                    grad_weight.shape[2], grad_weight.shape[3],
                                    grad_out.shape[2], grad_out.shape[3], groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef Py_ssize_t col_size = _col_size(&g), gathered_size = _gathered_size(&g)
    cdef Py_ssize_t n_out = g.out_h * g.out_w
    cdef Py_ssize_t c_out = grad_weight.shape[0]
    cdef Py_ssize_t w_size = c_out * g.col_rows
    cdef Py_ssize_t n_blocks = _n_blocks(&g, n_threads)
    cdef Py_ssize_t item, n, n_images, tid
    cdef bint want_bias = grad_bias.shape[0] > 0
    # the input gradient, when wanted, goes through _flat_conv, _direct_input_gradient, _packed_input_gradient or
    # the tiles below
    cdef convx_conv_shape shape = _conv_shape(&g), adjoint
    cdef int level = _level()
    cdef int input_impl = (_input_impl(&g, &shape, &adjoint, floating is float, n_threads) if grad_in.shape[0] > 0
                           else IMPL_NONE)
    # convx's blocks sweep a per-thread partial of the whole (transposed) gradient for every
    # GKC pixels: BLAS does better with large gradients, or few output channels to fill a strip.
    cdef int weight_impl = _weight_impl(&g, &shape, floating is float, n_threads)
    cdef bint flat = input_impl == IMPL_FLAT
    if flat:
        _flat_conv(&grad_out[0, 0, 0, 0], weight, True, NULL, NULL, &grad_in[0, 0, 0, 0], &shape, g.batch, n_threads)
    cdef bint direct_input = input_impl == IMPL_DIRECT_ROWS or input_impl == IMPL_DIRECT_IMAGES
    if direct_input and not _direct_input_gradient(&grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0], &grad_in[0, 0, 0, 0],
                                                   &g, &adjoint, n_threads,
                                                   DIRECT_ROWS if input_impl == IMPL_DIRECT_ROWS else DIRECT_IMAGES):
        direct_input = False
        input_impl = IMPL_PACKED if _packed_input(&g, n_threads) else IMPL_IM2COL
    cdef bint packed_input = input_impl == IMPL_PACKED
    cdef bint want_input = input_impl == IMPL_IM2COL
    cdef WeightProduct wp
    packed = _pack_weight(weight, groups, True, &wp) if want_input else None
    cdef Py_ssize_t work_size = _product_work_size(&wp, floating is float) if want_input else 1
    cdef bint weight_done = False
    if weight_impl == IMPL_FLAT:
        weight_done = _flat_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch,
                                            &grad_weight[0, 0, 0, 0], n_threads)
    elif weight_impl == IMPL_DIRECT_OUTER:
        weight_done = _direct_outer_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch,
                                                    &grad_weight[0, 0, 0, 0], n_threads)
    elif weight_impl == IMPL_DIRECT_BY_IMAGES or weight_impl == IMPL_DIRECT_BY_CHANNELS:
        weight_done = _direct_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch,
                                              &grad_weight[0, 0, 0, 0], n_threads,
                                              DIRECT_BY_IMAGES if weight_impl == IMPL_DIRECT_BY_IMAGES
                                              else DIRECT_BY_CHANNELS)
    cdef bint packed_weight = (not weight_done and level != CONVX_GEMM_BLAS and w_size > 0
                               and g.c_out_g >= 32 and g.c_out_g * g.col_rows <= PACKED_WEIGHT_MOST)
    if packed_weight:
        _packed_weight_gradient(&grad_out[0, 0, 0, 0], &x[0, 0, 0, 0], &shape, g.batch, &grad_weight[0, 0, 0, 0],
                                n_threads)
    if w_size > 0:
        # the tiles' weight products are BLAS's at every level
        _ran(OP_WEIGHT, weight_impl if weight_done else (IMPL_PACKED if packed_weight else IMPL_IM2COL),
             level if weight_done or packed_weight else CONVX_GEMM_BLAS)
    if grad_in.shape[0] > 0:
        _ran(OP_INPUT, input_impl, wp.level if want_input else level)
    weight_done = weight_done or packed_weight
    if packed_input:
        _packed_input_gradient(&grad_out[0, 0, 0, 0], &weight[0, 0, 0, 0], &grad_in[0, 0, 0, 0], &shape, g.batch,
                               n_threads)
    if weight_done and not (want_bias or want_input):
        return
    n_threads = max(1, min(n_threads, n_blocks))
    dtype = np.asarray(grad_weight).dtype
    cdef floating[::1] col = np.empty(n_threads * col_size, dtype=dtype)
    cdef floating[::1] gathered = np.empty(n_threads * gathered_size, dtype=dtype)
    cdef floating[::1] work = np.empty(n_threads * work_size, dtype=dtype)
    cdef floating[::1] w_parts = np.zeros(1 if weight_done else n_threads * w_size, dtype=dtype)
    cdef floating[::1] b_parts = np.zeros(n_threads * c_out, dtype=dtype)
    with _blas_limit(not weight_done or (want_input and wp.level == CONVX_GEMM_BLAS)):
        with nogil, parallel(num_threads=n_threads):
            tid = threadid()
            for item in prange(n_blocks, schedule='static'):
                n = _block_start(&g, item, n_blocks)
                n_images = _block_start(&g, item + 1, n_blocks) - n
                if not weight_done:
                    _backward_weight_tile(&grad_out[n, 0, 0, 0], &x[n, 0, 0, 0], &w_parts[tid * w_size], &g,
                                          n_images, &col[tid * col_size], &gathered[tid * gathered_size])
                if want_bias:
                    _bias_grad_images(&grad_out[n, 0, 0, 0], &b_parts[tid * c_out], n_images, c_out, n_out)
                if want_input:
                    _backward_input_tile(&grad_out[n, 0, 0, 0], &wp, &grad_in[n, 0, 0, 0], &g,
                                         n_images, &col[tid * col_size], &gathered[tid * gathered_size],
                                         &work[tid * work_size])
    with nogil:
        if not weight_done:
            _sum_partials(&w_parts[0], n_threads, w_size, &grad_weight[0, 0, 0, 0])
        if want_bias:
            _sum_partials(&b_parts[0], n_threads, c_out, &grad_bias[0])


def conv2d_backward_bias_channels_last(const floating[:, ::1] grad_out, floating[::1] grad_bias, int n_threads):
    """grad_bias[c] = sum over the rows (pixels) of grad_out (N*H*W, C): blocks of BIAS_ROWS rows
    summed by the threads, vectorised along the channels, then the blocks' sums added in order (the
    same blocks and order whatever the thread count)."""
    cdef Py_ssize_t rows = grad_out.shape[0], channels = grad_out.shape[1]
    cdef Py_ssize_t n_blocks = (rows + BIAS_ROWS - 1) // BIAS_ROWS, blk, r, c
    cdef floating[:, ::1] sums = np.zeros((max(1, n_blocks), channels), dtype=np.asarray(grad_bias).dtype)
    cdef floating* block
    cdef const floating* row
    with nogil:
        for blk in prange(n_blocks, schedule='static', num_threads=_team(n_threads, n_blocks)):
            block = &sums[blk, 0]
            for r in range(blk * BIAS_ROWS, min(rows, (blk + 1) * BIAS_ROWS)):
                row = &grad_out[r, 0]
                for c in range(channels):
                    block[c] = block[c] + row[c]
        for c in range(channels):
            grad_bias[c] = 0
        for blk in range(n_blocks):
            for c in range(channels):
                grad_bias[c] = grad_bias[c] + sums[blk, c]


def conv2d_backward_bias(const floating[:, :, :, ::1] grad_out, floating[::1] grad_bias, int n_threads):
    """grad_bias[c] = sum_{n, h, w} grad_out[n, c, h, w]."""
    cdef Py_ssize_t batch = grad_out.shape[0], channels = grad_out.shape[1]
    cdef Py_ssize_t n_out = grad_out.shape[2] * grad_out.shape[3]
    cdef Py_ssize_t c, n
    cdef floating total
    with nogil:
        for c in prange(channels, schedule='static', num_threads=_team(n_threads, channels)):
            total = 0
            for n in range(batch):
                total = total + _plane_sum(&grad_out[n, c, 0, 0], n_out)
            grad_bias[c] = total
