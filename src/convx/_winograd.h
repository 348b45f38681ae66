/* Winograd F(4x4, 3x3) transforms (Lavin & Gray, "Fast Algorithms for Convolutional Neural
 * Networks", 2016), for the opt-in `algorithm="winograd"` of 3x3 stride-1 convolutions.
 *
 * A 4x4 block of outputs of a 3x3 correlation is Y = A^T [(G g G^T) * (B^T d B)] A, with d the
 * 6x6 input patch under it and * elementwise: 36 multiplies instead of 144. Over channels the
 * 36 products become 36 independent GEMMs (done by BLAS in _winograd.pxi); this file holds
 * the transforms around them. Every transform works on a whole row of tiles at once, with the
 * tiles along the innermost (contiguous) index, so that its loops vectorise; the input's rows
 * are first split into their four phases (columns 4k, 4k+1, 4k+2, 4k+3).
 *
 * Matrices, interpolation points 0, +-1, +-2 and infinity:
 *   B^T = [4  0 -5  0  1  0]   G = [ 1/4     0    0 ]   A^T = [1  1  1  1  1  0]
 *         [0 -4 -4  1  1  0]       [-1/6 -1/6 -1/6 ]         [0  1 -1  2 -2  0]
 *         [0  4 -4 -1  1  0]       [-1/6  1/6 -1/6 ]         [0  1  1  4  4  0]
 *         [0 -2 -1  2  1  0]       [1/24 1/12  1/6 ]         [0  1 -1  8 -8  1]
 *         [0  2 -1 -2  1  0]       [1/24 -1/12 1/6 ]
 *         [0  4  0 -5  0  1]       [ 0     0    1  ]
 * The weight gradient follows from Y's linearity in U = G g G^T:
 *   dL/dU = (A dY A^T) * (B^T d B),   dL/dg = G^T (dL/dU) G.
 */
#ifndef CONVX_WINOGRAD_H
#define CONVX_WINOGRAD_H

#include <stddef.h>
#include <string.h>
#include "_simd.h"

#define CONVX_WINO_JOIN2(a, b) a##_##b
#define CONVX_WINO_JOIN(a, b) CONVX_WINO_JOIN2(a, b)
#define CONVX_WINO(name) CONVX_WINO_JOIN(name, WS)

/* Elements between a transform's vectors in scratch beyond their length: vectors a power of
 * two apart would share cache sets. */
#define CONVX_WINO_SKEW 16

/* Scratch elements one thread needs for any transform below (runs of run_rows tile rows of
 * tiles_w tiles, weight rows of at most n_cols columns), a whole number of cache lines plus
 * one, so that the threads' scratch neither shares lines nor lines up. */
static inline ptrdiff_t convx_wino_scratch(ptrdiff_t tiles_w, ptrdiff_t run_rows, ptrdiff_t n_cols) {
    ptrdiff_t runs = 72 * (run_rows * tiles_w + CONVX_WINO_SKEW) + 8 * (tiles_w + 2);
    ptrdiff_t weights = 27 * n_cols;
    ptrdiff_t most = runs > weights ? runs : weights;
    return (most + 15) / 16 * 16 + 16;
}

#define WT float
#define WS f
#include "_winograd_body.h"
#undef WT
#undef WS

#define WT double
#define WS d
#include "_winograd_body.h"
#undef WT
#undef WS

#endif
