# unfold / fold (PyTorch's im2col / col2im as ops of their own), on the column builders of the
# im2col convolution path (_conv_im2col.pxi): each (image, channel) plane is one unit of work,
# its kH*kW rows of the (C*kH*kW, L) column matrix filled (or folded back) by one thread, so no
# thread writes what another reads or writes.


cdef inline ConvGeometry _unfold_geometry(Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h, Py_ssize_t out_w,
                                          int kernel_h, int kernel_w, int dilation_h, int dilation_w,
                                          int pad_h, int pad_w, int stride_h, int stride_w) noexcept nogil:
    """One channel plane's geometry for _im2col / _col2im: all its outputs in one tile."""
    cdef ConvGeometry g
    memset(&g, 0, sizeof(ConvGeometry))
    g.batch = 1
    g.groups = 1
    g.c_in_g = 1
    g.c_out_g = 1
    g.height = height
    g.width = width
    g.out_h = out_h
    g.out_w = out_w
    g.kernel_h = kernel_h
    g.kernel_w = kernel_w
    g.stride_h = stride_h
    g.stride_w = stride_w
    g.pad_h = pad_h
    g.pad_w = pad_w
    g.dilation_h = dilation_h
    g.dilation_w = dilation_w
    g.col_rows = kernel_h * kernel_w
    g.chunk_rows = out_h
    g.chunk_cols = out_w
    g.block = 1
    return g


def unfold_forward(const floating[:, :, :, ::1] x, floating[:, :, ::1] cols, int kernel_h, int kernel_w,
                   int dilation_h, int dilation_w, int pad_h, int pad_w, int stride_h, int stride_w,
                   Py_ssize_t out_h, Py_ssize_t out_w, int n_threads):
    """cols[n, (c*kH + i)*kW + j, oh*out_w + ow] = x[n, c, oh*sH - pH + i*dH, ow*sW - pW + j*dW] (0 outside)."""
    cdef Py_ssize_t batch = x.shape[0], channels = x.shape[1], height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t taps = <Py_ssize_t> kernel_h * kernel_w, n_cols = out_h * out_w, units = batch * channels, u
    cdef int team = _elementwise_team(n_threads, units, units * taps * n_cols)
    cdef ConvGeometry g = _unfold_geometry(height, width, out_h, out_w, kernel_h, kernel_w, dilation_h, dilation_w,
                                           pad_h, pad_w, stride_h, stride_w)
    if units == 0 or n_cols == 0:
        return
    cdef const floating* src = &x[0, 0, 0, 0]
    cdef floating* dst = &cols[0, 0, 0]
    with nogil:
        for u in prange(units, schedule='static', num_threads=team):
            _im2col(src + u * height * width, &g, 0, out_h, 0, out_w, dst + u * taps * n_cols, n_cols)


def fold_forward(const floating[:, :, ::1] cols, floating[:, :, :, ::1] out, int kernel_h, int kernel_w,
                 int dilation_h, int dilation_w, int pad_h, int pad_w, int stride_h, int stride_w,
                 Py_ssize_t out_h, Py_ssize_t out_w, int n_threads):
    """out := 0; out[n, c, oh*sH - pH + i*dH, ow*sW - pW + j*dW] += cols[n, (c*kH + i)*kW + j, oh*out_w + ow]
    (the adjoint of unfold_forward; out_h x out_w are the blocks along each axis)."""
    cdef Py_ssize_t batch = out.shape[0], channels = out.shape[1], height = out.shape[2], width = out.shape[3]
    cdef Py_ssize_t taps = <Py_ssize_t> kernel_h * kernel_w, n_cols = out_h * out_w, units = batch * channels, u
    cdef Py_ssize_t plane = height * width
    cdef int team = _elementwise_team(n_threads, units, units * (taps * n_cols + plane))
    cdef ConvGeometry g = _unfold_geometry(height, width, out_h, out_w, kernel_h, kernel_w, dilation_h, dilation_w,
                                           pad_h, pad_w, stride_h, stride_w)
    if units == 0 or plane == 0:
        return
    cdef floating* dst = &out[0, 0, 0, 0]
    cdef const floating* src = NULL
    if n_cols > 0:
        src = &cols[0, 0, 0]
    with nogil:
        for u in prange(units, schedule='static', num_threads=team):
            memset(dst + u * plane, 0, plane * sizeof(floating))
            if n_cols > 0:
                _col2im(src + u * taps * n_cols, &g, 0, out_h, 0, out_w, dst + u * plane, n_cols)
