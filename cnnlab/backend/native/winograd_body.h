/*
 * winograd_body.h: the data transforms of the Winograd convolution F(2x2, 3x3), compiled
 * once per level (after simd.h; see winograd.c for the maths and the Python binding).
 *
 *     Y_tile = A^T [ (G g G^T) (.) (B^T d B) ] A         (.) = elementwise, 4x4
 *
 *     B^T = | 1  0 -1  0 |     A^T = | 1  1  1  0 |
 *           | 0  1  1  0 |           | 0  1 -1 -1 |
 *           | 0 -1  1  0 |
 *           | 0  1  0 -1 |
 *
 * Each transform is vectorised over VL neighbouring tiles of a tile row (loads and stores
 * of the first lanes at the row's end). Layouts: images and gradients NCHW; transformed
 * arrays (16, channels, tiles), tiles numbered (image, tile row, tile column) within the
 * chunk of images passed in.
 */

/* Columns 2l, 2l + 1, 2l + 2, 2l + 3 of `row` for tiles l < count (<= VL): four vectors.
 * The last two are the first two of row + 2, loaded again (from L1) rather than shuffled. */
SIMD_INLINE void tile_columns(const float *row, ptrdiff_t count, vf *c)
{
    ptrdiff_t floats = 2 * count;
    deinterleave(load_first(row, clamp_lanes(floats)), load_first(row + VL, clamp_lanes(floats - VL)),
                 &c[0], &c[1]);
    deinterleave(load_first(row + 2, clamp_lanes(floats)),
                 load_first(row + 2 + VL, clamp_lanes(floats - VL)), &c[2], &c[3]);
}

/* store_first(p, count, v) into a transformed plane, as one whole-vector store when the
 * plane has VL floats of room from p on: its lanes past count then land on tiles that the
 * loops write later (they walk each plane in increasing tile order: channel, image, tile),
 * so they are overwritten. A store of the first lanes only costs several plain stores on
 * AVX2 (vmaskmovps is microcode on AMD), and this store is the last of a tile row. */
SIMD_INLINE void store_tiles(float *p, ptrdiff_t count, ptrdiff_t room, vf v)
{
    if (room >= VL)
        store(p, v);
    else
        store_first(p, count, v);
}

/* load_first(p, count) from a transformed plane for a computation whose lanes stay apart:
 * a whole-vector load when the plane has VL floats of room (lanes past count then hold
 * later tiles, whose results are never stored). */
SIMD_INLINE vf load_tiles(const float *p, ptrdiff_t count, ptrdiff_t room)
{
    return room >= VL ? load(p) : load_first(p, count);
}

/* The image plane x (height x width) into the zero-bordered plane (its border stays zero). */
static void pad_plane(const float *x, float *plane, const tiling *t)
{
    for (ptrdiff_t i = 0; i < t->height; i++)
        memcpy(plane + (i + t->pad_top) * t->stride + t->pad_left, x + i * t->width,
               (size_t)t->width * sizeof(float));
}

/* Row a of (B^T d) B from row a of B^T d, into planes 4a .. 4a + 3 (out: plane 4a). */
SIMD_INLINE void store_input_row(const vf *u, float *out, ptrdiff_t plane_step, ptrdiff_t count,
                                 ptrdiff_t room)
{
    vf row[4] = {u[0] - u[2], u[1] + u[2], u[2] - u[1], u[1] - u[3]};
    for (int s = 0; s < 4; s++)
        store_tiles(out + s * plane_step, count, room, row[s]);
}

/* V[xi][c][tile] = (B^T d B)[xi] for every tile d of every plane x[b, c]. */
static void winograd_input(const float *x, float *v, const tiling *t, float *plane)
{
    ptrdiff_t all_tiles = t->batch * t->tiles;
    ptrdiff_t plane_step = t->channels * all_tiles;  /* from xi to xi + 1 */
    for (ptrdiff_t c = 0; c < t->channels; c++)  /* store_tiles' order */
        for (ptrdiff_t b = 0; b < t->batch; b++) {
            pad_plane(x + (b * t->channels + c) * t->height * t->width, plane, t);
            for (ptrdiff_t ti = 0; ti < t->tile_rows; ti++)
                for (ptrdiff_t j = 0; j < t->tile_cols; j += VL) {
                    ptrdiff_t count = t->tile_cols - j < VL ? t->tile_cols - j : VL;
                    /* B^T d row by row of it, each stored as soon as it is known and d's
                     * rows loaded as late as possible: 16 live vectors of d and 16 of
                     * B^T d would not fit AVX2's 16 registers (they spilled). */
                    const float *top = plane + 2 * ti * t->stride + 2 * j;
                    ptrdiff_t at = c * all_tiles + b * t->tiles + ti * t->tile_cols + j;
                    float *out = v + at;
                    ptrdiff_t room = plane_step - at;
                    vf d0[4], d1[4], d2[4], d3[4], u[4];
                    tile_columns(top, count, d0);
                    tile_columns(top + t->stride, count, d1);
                    tile_columns(top + 2 * t->stride, count, d2);
                    for (int s = 0; s < 4; s++)
                        u[s] = d0[s] - d2[s];
                    store_input_row(u, out, plane_step, count, room);
                    for (int s = 0; s < 4; s++)
                        u[s] = d1[s] + d2[s];
                    store_input_row(u, out + 4 * plane_step, plane_step, count, room);
                    for (int s = 0; s < 4; s++)
                        u[s] = d2[s] - d1[s];
                    store_input_row(u, out + 8 * plane_step, plane_step, count, room);
                    tile_columns(top + 3 * t->stride, count, d3);
                    for (int s = 0; s < 4; s++)
                        u[s] = d1[s] - d3[s];
                    store_input_row(u, out + 12 * plane_step, plane_step, count, room);
                }
        }
}

/* The 16 transformed planes of VL tiles from tile `at` of m (plane_step apart): A^T M, rows
 * 0 and 1. */
SIMD_INLINE void output_rows(const float *m, ptrdiff_t at, ptrdiff_t plane_step, ptrdiff_t count,
                             vf *s0, vf *s1)
{
    vf q[4][4];
    for (int a = 0; a < 4; a++)
        for (int s = 0; s < 4; s++)
            q[a][s] = load_tiles(m + (4 * a + s) * plane_step + at, count, plane_step - at);
    for (int s = 0; s < 4; s++) {  /* A^T M */
        s0[s] = q[0][s] + q[1][s] + q[2][s];
        s1[s] = q[1][s] - q[2][s] - q[3][s];
    }
}

/* y[b, o] (out_h x out_w) = A^T M A + bias[o], tile by tile. */
static void winograd_output(const float *m, const float *bias, float *y, const tiling *t,
                            ptrdiff_t out_h, ptrdiff_t out_w)
{
    ptrdiff_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    for (ptrdiff_t b = 0; b < t->batch; b++)
        for (ptrdiff_t o = 0; o < t->channels; o++) {
            vf shift = splat(bias[o]);
            float *target = y + (b * t->channels + o) * out_h * out_w;
            for (ptrdiff_t ti = 0; ti < t->tile_rows; ti++)
                for (ptrdiff_t j = 0; j < t->tile_cols; j += VL) {
                    ptrdiff_t count = t->tile_cols - j < VL ? t->tile_cols - j : VL;
                    vf s0[4], s1[4];
                    output_rows(m, o * all_tiles + b * t->tiles + ti * t->tile_cols + j,
                                plane_step, count, s0, s1);
                    vf *rows[2] = {s0, s1};
                    for (int r = 0; r < 2 && 2 * ti + r < out_h; r++) {  /* (A^T M) A */
                        vf *p = rows[r];
                        vf left = p[0] + p[1] + p[2] + shift;
                        vf right = p[1] - p[2] - p[3] + shift;
                        vf first, second;
                        interleave(left, right, &first, &second);
                        ptrdiff_t columns = out_w - 2 * j < 2 * count ? out_w - 2 * j : 2 * count;
                        float *row = target + (2 * ti + r) * out_w + 2 * j;
                        store_first(row, clamp_lanes(columns), first);
                        store_first(row + VL, clamp_lanes(columns - VL), second);
                    }
                }
        }
}

/* The 2x2 blocks g of VL tiles (g[r][s]: row r, column s)  ->  yhat = A g A^T, stored at
 * tile `at` of each plane (with store_tiles, so in its order). */
SIMD_INLINE void store_grad_tiles(vf g[2][2], float *yhat, ptrdiff_t at, ptrdiff_t plane_step,
                                  ptrdiff_t count)
{
    const vf zero = splat(0.0f);
    vf h[4][2];
    for (int s = 0; s < 2; s++) {  /* A g, A = [[1, 0], [1, 1], [1, -1], [0, -1]] */
        h[0][s] = g[0][s];
        h[1][s] = g[0][s] + g[1][s];
        h[2][s] = g[0][s] - g[1][s];
        h[3][s] = zero - g[1][s];
    }
    for (int a = 0; a < 4; a++) {  /* (A g) A^T */
        vf row[4] = {h[a][0], h[a][0] + h[a][1], h[a][0] - h[a][1], zero - h[a][1]};
        for (int s = 0; s < 4; s++)
            store_tiles(yhat + (4 * a + s) * plane_step + at, count, plane_step - at, row[s]);
    }
}

/* Yhat[xi][o][tile] = (A g A^T)[xi] for the 2x2 blocks g of dy[b, o] (zero past its edge);
 * dbias[o] += the sum of dy[b, o]. */
static void winograd_grad_output(const float *dy, float *yhat, double *dbias, const tiling *t,
                                 ptrdiff_t out_h, ptrdiff_t out_w)
{
    ptrdiff_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    for (ptrdiff_t o = 0; o < t->channels; o++)  /* store_tiles' order */
        for (ptrdiff_t b = 0; b < t->batch; b++) {
            const float *source = dy + (b * t->channels + o) * out_h * out_w;
            vf total = splat(0.0f);
            for (ptrdiff_t ti = 0; ti < t->tile_rows; ti++)
                for (ptrdiff_t j = 0; j < t->tile_cols; j += VL) {
                    ptrdiff_t count = t->tile_cols - j < VL ? t->tile_cols - j : VL;
                    ptrdiff_t columns = out_w - 2 * j < 2 * count ? out_w - 2 * j : 2 * count;
                    vf g[2][2];
                    for (int r = 0; r < 2; r++) {
                        vf low = splat(0.0f), high = splat(0.0f);
                        if (2 * ti + r < out_h) {
                            const float *row = source + (2 * ti + r) * out_w + 2 * j;
                            low = load_first(row, clamp_lanes(columns));
                            high = load_first(row + VL, clamp_lanes(columns - VL));
                        }
                        total = total + (low + high);
                        deinterleave(low, high, &g[r][0], &g[r][1]);
                    }
                    store_grad_tiles(g, yhat, o * all_tiles + b * t->tiles + ti * t->tile_cols + j,
                                     plane_step, count);
                }
            dbias[o] += sum_lanes(total);
        }
}

/* row[0 : count] += first, second (VL floats each) */
SIMD_INLINE void add_to_row(float *row, vf first, vf second, ptrdiff_t count)
{
    ptrdiff_t low = clamp_lanes(count), high = clamp_lanes(count - VL);
    store_first(row, low, load_first(row, low) + first);
    store_first(row + VL, high, load_first(row + VL, high) + second);
}

/* dx[b, c] = the interior of the padded plane to which every tile adds B dV B^T. */
static void winograd_grad_input(const float *dv, float *dx, const tiling *t, float *plane)
{
    ptrdiff_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    ptrdiff_t plane_floats = (2 * t->tile_rows + 2) * t->stride;
    const vf zero = splat(0.0f);
    for (ptrdiff_t b = 0; b < t->batch; b++)
        for (ptrdiff_t c = 0; c < t->channels; c++) {
            memset(plane, 0, (size_t)plane_floats * sizeof(float));
            for (ptrdiff_t ti = 0; ti < t->tile_rows; ti++)
                for (ptrdiff_t j = 0; j < t->tile_cols; j += VL) {
                    ptrdiff_t count = t->tile_cols - j < VL ? t->tile_cols - j : VL;
                    ptrdiff_t at = c * all_tiles + b * t->tiles + ti * t->tile_cols + j;
                    const float *in = dv + at;
                    vf q[4][4];
                    for (int a = 0; a < 4; a++)
                        for (int s = 0; s < 4; s++)
                            q[a][s] = load_tiles(in + (4 * a + s) * plane_step, count,
                                                 plane_step - at);
                    for (int r = 0; r < 4; r++) {  /* (B q) B^T, added at columns 2l .. 2l + 3 */
                        vf e[4];
                        for (int s = 0; s < 4; s++)  /* B q, B = (B^T)^T */
                            e[s] = r == 0 ? q[0][s]
                                 : r == 1 ? q[1][s] - q[2][s] + q[3][s]
                                 : r == 2 ? q[1][s] - q[0][s] + q[2][s]
                                          : zero - q[3][s];
                        vf f0 = e[0];
                        vf f1 = e[1] - e[2] + e[3];
                        vf f2 = e[1] - e[0] + e[2];
                        vf f3 = zero - e[3];
                        float *row = plane + (2 * ti + r) * t->stride + 2 * j;
                        vf first, second;
                        interleave(f0, f1, &first, &second);
                        add_to_row(row, first, second, 2 * count);
                        interleave(f2, f3, &first, &second);
                        add_to_row(row + 2, first, second, 2 * count);
                    }
                }
            float *target = dx + (b * t->channels + c) * t->height * t->width;
            for (ptrdiff_t i = 0; i < t->height; i++)
                memcpy(target + i * t->width, plane + (i + t->pad_top) * t->stride + t->pad_left,
                       (size_t)t->width * sizeof(float));
        }
}

/* The output transform fused with ReLU and a 2x2 max pool: each tile's 2x2 outputs are
 * exactly one pool window, so y[b, o, ti, tj] = max(relu(A^T M A + bias)) of the tile and
 * code = the window's first-maximum tap (0..3, row-major) or 255 where that max is <= 0
 * (as the fused ReLU -> MaxPool2d of cnnlab/nn/module.py). pool_h x pool_w windows. */
static void winograd_output_relu_pool(const float *m, const float *bias, float *y,
                                      unsigned char *code, const tiling *t, ptrdiff_t pool_h,
                                      ptrdiff_t pool_w)
{
    ptrdiff_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    const vf zero = splat(0.0f);
    /* the windows as runs: all pool_h pool_w at once when they are the first tile rows */
    int flat = pool_w == t->tile_cols;
    ptrdiff_t runs = flat ? 1 : pool_h, length = flat ? pool_h * pool_w : pool_w;
    for (ptrdiff_t b = 0; b < t->batch; b++)
        for (ptrdiff_t o = 0; o < t->channels; o++) {
            vf shift = splat(bias[o]);
            ptrdiff_t plane = (b * t->channels + o) * pool_h * pool_w;
            for (ptrdiff_t ti = 0; ti < runs; ti++)
                for (ptrdiff_t j = 0; j < length; j += VL) {
                    ptrdiff_t count = length - j < VL ? length - j : VL;
                    vf s0[4], s1[4];
                    output_rows(m, o * all_tiles + b * t->tiles + ti * t->tile_cols + j,
                                plane_step, count, s0, s1);
                    /* the window, taps in row-major order */
                    vf candidates[3] = {s0[1] - s0[2] - s0[3] + shift, s1[0] + s1[1] + s1[2] + shift,
                                        s1[1] - s1[2] - s1[3] + shift};
                    /* first maximum (strictly larger replaces), NaN wins, as the 2x2 pool */
                    vf best = s0[0] + s0[1] + s0[2] + shift;
                    vi tap = splat_i(0);
                    for (int k = 0; k < 3; k++) {
                        tap = blend_i(candidates[k] > best, splat_i(k + 1), tap);
                        best = maximum(best, candidates[k]);
                    }
                    tap = blend_i(best > zero, tap, splat_i(255));
                    store_first(y + plane + ti * pool_w + j, count, maximum(best, zero));
                    store_bytes(code + plane + ti * pool_w + j, count, tap);
                }
        }
}

/* winograd_grad_output for the fused block: the 2x2 block g of the conv output's gradient is
 * the pooled gradient at the recorded tap (0 elsewhere, and 0 for code 255 and for tiles past
 * the last whole window). */
static void winograd_grad_output_pooled(const float *dp, const unsigned char *code, float *yhat,
                                        double *dbias, const tiling *t, ptrdiff_t pool_h,
                                        ptrdiff_t pool_w)
{
    ptrdiff_t all_tiles = t->batch * t->tiles, plane_step = t->channels * all_tiles;
    const vf zero = splat(0.0f);
    /* the tiles as runs: the whole grid at once when the windows are its first tile rows
     * (window index = tile index), else tile row by tile row */
    int flat = pool_w == t->tile_cols;
    ptrdiff_t runs = flat ? 1 : t->tile_rows, length = flat ? t->tiles : t->tile_cols;
    for (ptrdiff_t o = 0; o < t->channels; o++)  /* store_tiles' order */
        for (ptrdiff_t b = 0; b < t->batch; b++) {
            ptrdiff_t plane = (b * t->channels + o) * pool_h * pool_w;
            vf total = zero;
            for (ptrdiff_t ti = 0; ti < runs; ti++)
                for (ptrdiff_t j = 0; j < length; j += VL) {
                    ptrdiff_t count = length - j < VL ? length - j : VL;
                    /* windows in this run from j on: all pool_h pool_w of the flat grid, or
                     * pool_w of a tile row below pool_h */
                    ptrdiff_t windows = (flat ? pool_h * pool_w : ti < pool_h ? pool_w : 0) - j;
                    windows = windows < count ? windows : count;
                    vf gradient = zero;
                    vi tap = splat_i(255);
                    if (windows > 0) {
                        gradient = load_first(dp + plane + ti * pool_w + j, windows);
                        tap = load_bytes(code + plane + ti * pool_w + j, windows, 255);
                    }
                    vf g[2][2];
                    for (int r = 0; r < 2; r++)
                        for (int s = 0; s < 2; s++)
                            g[r][s] = blend(tap == splat_i(2 * r + s), gradient, zero);
                    total = total + ((g[0][0] + g[0][1]) + (g[1][0] + g[1][1]));
                    store_grad_tiles(g, yhat, o * all_tiles + b * t->tiles + ti * t->tile_cols + j,
                                     plane_step, count);
                }
            dbias[o] += sum_lanes(total);
        }
}
