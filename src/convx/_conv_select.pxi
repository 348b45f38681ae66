# Which implementation takes each convolution op (one function per op), what the calling
# thread's last call ran, and the per-thread settings (ConvConfig) the autotuner uses.

cdef enum:
    # The implementations of the convolution entry points, as _forward_impl, _input_impl and
    # _weight_impl name them (the index of the name in IMPLEMENTATIONS).
    IMPL_NONE = 0
    IMPL_FLAT = 1               # _flat_conv / _flat_weight_gradient
    IMPL_PLANE = 2              # _plane_conv
    IMPL_DIRECT_ROWS = 3        # _direct_conv, tiles along output rows
    IMPL_DIRECT_IMAGES = 4      # _direct_conv, tiles across images
    IMPL_PACKED = 5             # _implicit_conv, _packed_input_gradient, _packed_weight_gradient
    IMPL_IM2COL = 6             # im2col / col2im tiles and a GEMM (convx's, or BLAS)
    IMPL_DIRECT_OUTER = 7       # _direct_outer_weight_gradient
    IMPL_DIRECT_BY_IMAGES = 8   # _direct_weight_gradient, threads split the batch
    IMPL_DIRECT_BY_CHANNELS = 9  # _direct_weight_gradient, threads split the output channels
    IMPL_DEPTHWISE_SPLIT = 10   # _depthwise.pxi's phase-split sweeps (no GEMM level)
    IMPL_DEPTHWISE_DIRECT = 11  # _depthwise.pxi's row loops

IMPLEMENTATIONS = ("none", "flat", "plane", "direct-rows", "direct-images", "packed", "im2col", "direct-outer",
                   "direct-split-images", "direct-split-channels", "depthwise-split", "depthwise-direct")

cdef extern from *:
    """
    /* What the calling thread's last convolution ran, per op (forward, input gradient, weight
       gradient): implementation * 4 + GEMM level, or -1. */
    static __thread int convx_thread_ran[3] = {-1, -1, -1};
    static void convx_set_ran(int op, int code) { convx_thread_ran[op] = code; }
    static int convx_get_ran(int op) { return convx_thread_ran[op]; }
    """
    void convx_set_ran(int op, int code) noexcept nogil
    int convx_get_ran(int op) noexcept nogil

cdef enum:
    OP_FORWARD = 0
    OP_INPUT = 1
    OP_WEIGHT = 2

CONV_OPS = ("forward", "input", "weight")


cdef inline void _ran(int op, int impl, int level) noexcept nogil:
    convx_set_ran(op, impl * 4 + level)


cdef str _impl_name(int code):
    if code < 0:
        return None
    impl, level = divmod(code, 4)
    if impl >= IMPL_DEPTHWISE_SPLIT:
        return IMPLEMENTATIONS[impl]
    return f"{GEMM_KERNELS[level]}/{IMPLEMENTATIONS[impl]}"


cdef int _forward_impl(convx_conv_shape* s, Py_ssize_t batch, bint is_float) noexcept nogil:
    """The implementation that takes the forward of shape s (where the data let it)."""
    cdef int mode
    if _flat_choice(s, batch, False, is_float):
        return IMPL_FLAT
    if _plane_choice(s, batch, is_float):
        return IMPL_PLANE
    mode = _direct_choice(s, batch, is_float)
    if mode == DIRECT_ROWS:
        return IMPL_DIRECT_ROWS
    if mode == DIRECT_IMAGES:
        return IMPL_DIRECT_IMAGES
    return IMPL_IM2COL if _level() == CONVX_GEMM_BLAS else IMPL_PACKED


cdef int _input_impl(ConvGeometry* g, convx_conv_shape* s, convx_conv_shape* adjoint, bint is_float,
                     int n_threads) noexcept nogil:
    """The implementation that takes the input gradient of g (s its shape); adjoint receives the
    shape of the direct kernels' convolution where they take it."""
    cdef int mode
    if _flat_choice(s, g.batch, False, is_float):
        return IMPL_FLAT
    mode = _direct_input_mode(g, adjoint, is_float) if g.batch else DIRECT_OFF
    if mode == DIRECT_ROWS:
        return IMPL_DIRECT_ROWS
    if mode == DIRECT_IMAGES:
        return IMPL_DIRECT_IMAGES
    if _packed_input(g, n_threads):
        return IMPL_PACKED
    return IMPL_IM2COL


cdef int _weight_impl(ConvGeometry* g, convx_conv_shape* s, bint is_float, int n_threads) noexcept nogil:
    """The implementation that takes the weight gradient of g (s its shape)."""
    cdef int split
    if g.groups * g.c_out_g * g.col_rows == 0:
        return IMPL_NONE
    if _flat_choice(s, g.batch, True, is_float):
        return IMPL_FLAT
    split = _direct_weight_choice(s, g.batch, is_float, n_threads)
    if split == DIRECT_OUTER:
        return IMPL_DIRECT_OUTER
    if split == DIRECT_BY_IMAGES:
        return IMPL_DIRECT_BY_IMAGES
    if split == DIRECT_BY_CHANNELS:
        return IMPL_DIRECT_BY_CHANNELS
    if _level() != CONVX_GEMM_BLAS and g.c_out_g >= 32 and g.c_out_g * g.col_rows <= PACKED_WEIGHT_MOST:
        return IMPL_PACKED
    return IMPL_IM2COL


def conv_implementation(str op, Py_ssize_t batch, Py_ssize_t c_in, Py_ssize_t height, Py_ssize_t width,
                        Py_ssize_t c_out, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t out_h,
                        Py_ssize_t out_w, int groups, int stride_h, int stride_w, int pad_h, int pad_w,
                        int dilation_h, int dilation_w, bint is_float, int n_threads):
    """'level/implementation' that conv2d_forward ('forward'), conv2d_backward_input ('input') or
    conv2d_backward_params' weight gradient ('weight') takes for these sizes (as its arguments,
    already validated and cut as functional/conv.py cuts them), on finite data, under this
    thread's settings. Nothing is computed."""
    cdef ConvGeometry g = _geometry(batch, c_in, height, width, c_out, kernel_h, kernel_w, out_h, out_w, groups,
                                    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, n_threads)
    cdef convx_conv_shape shape, adjoint
    cdef int impl
    if op == "forward":
        _split_rows(&g, n_threads)
        shape = _conv_shape(&g)
        impl = _forward_impl(&shape, g.batch, is_float)
    elif op == "input":
        shape = _conv_shape(&g)
        impl = _input_impl(&g, &shape, &adjoint, is_float, n_threads)
    elif op == "weight":
        shape = _conv_shape(&g)
        impl = _weight_impl(&g, &shape, is_float, n_threads)
    else:
        raise ValueError(f"op must be one of {CONV_OPS}, got {op!r}")
    return _impl_name(impl * 4 + (CONVX_GEMM_BLAS if op == "weight" and impl == IMPL_IM2COL else _level()))


def conv_ran():
    """{'forward': ..., 'input': ..., 'weight': ...}: what the calling thread's last
    conv2d_forward, input gradient and weight gradient ran ('level/implementation'; None before
    any)."""
    return {name: _impl_name(convx_get_ran(op)) for op, name in enumerate(CONV_OPS)}


cdef class ConvConfig:
    """While entered, the calling thread's convolutions use GEMM kernel ``gemm``, direct mode
    ``direct`` and depthwise kernel ``depthwise`` (None: as before, which outside any ConvConfig is the process-wide setting of
    set_gemm_kernel / set_direct_conv / set_depthwise_kernel); the thread's previous settings come
    back on exit. Other
    threads are not affected."""
    cdef int level, mode, depthwise, previous_level, previous_mode, previous_depthwise
    cdef bint held

    def __init__(self, gemm=None, direct=None, depthwise=None):
        if gemm is None:
            self.level = -1
        elif gemm not in GEMM_KERNELS:
            raise ValueError(f"gemm kernel must be one of {', '.join(map(repr, GEMM_KERNELS))}, got {gemm!r}")
        else:
            self.level = GEMM_KERNELS.index(gemm)
            if self.level > _gemm_supported:
                raise ValueError(f"this CPU does not run the {gemm!r} kernel; it runs "
                                 f"{GEMM_KERNELS[:_gemm_supported + 1]}")
        if direct is None:
            self.mode = -1
        elif direct not in DIRECT_MODES:
            raise ValueError(f"direct conv mode must be one of {', '.join(map(repr, DIRECT_MODES))}, got {direct!r}")
        else:
            self.mode = DIRECT_MODES.index(direct)
        if depthwise is None:
            self.depthwise = -1
        elif depthwise not in DEPTHWISE_KERNELS:
            raise ValueError(f"depthwise kernel must be one of {', '.join(map(repr, DEPTHWISE_KERNELS))}, "
                             f"got {depthwise!r}")
        else:
            self.depthwise = DEPTHWISE_KERNELS.index(depthwise)

    def __enter__(self):
        if self.held:
            raise RuntimeError("this ConvConfig is already entered; make a new one per use")
        self.previous_level = convx_get_thread_gemm_level()
        self.previous_mode = convx_get_thread_direct_mode()
        self.previous_depthwise = convx_get_thread_depthwise_mode()
        convx_set_thread_config(self.previous_level if self.level < 0 else self.level,
                                self.previous_mode if self.mode < 0 else self.mode,
                                self.previous_depthwise if self.depthwise < 0 else self.depthwise)
        self.held = True
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if self.held:
            self.held = False
            convx_set_thread_config(self.previous_level, self.previous_mode, self.previous_depthwise)
        return False

    def __dealloc__(self):
        if self.held:
            self.held = False
            convx_set_thread_config(self.previous_level, self.previous_mode, self.previous_depthwise)


def supported_gemm_kernels():
    """The GEMM kernels this CPU runs, in GEMM_KERNELS' order."""
    return GEMM_KERNELS[:_gemm_supported + 1]
