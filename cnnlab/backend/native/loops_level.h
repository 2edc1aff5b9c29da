/*
 * loops_level.h: one level of the _loops kernels. loops_<level>.c defines CNNLAB_LEVEL_<NAME>
 * and includes this file, which compiles the loop and Winograd bodies for that level's
 * target (simd.h) and exports their table, loops_level_<name> (kernels.h).
 */
#include "simd.h"

#if SIMD_COMPILED
#include "loops_body.h"
#include "winograd_body.h"

const loops_level LEVEL_SYMBOL(loops_level) = {
    LEVEL_NAME,
    pool_forward_f32,
    pool_chunked_forward_f64,
    pool_backward_f32,
    pool_chunked_backward_f64,
    relu_forward_f32,
    relu_forward_f64,
    relu_backward_f32,
    relu_backward_f64,
    adam_f32,
    adam_f64,
    wide_im2col_f32,
    wide_im2col_f64,
    wide_col2im_f32,
    wide_col2im_f64,
    conv_relu_pool_forward,
    conv_relu_pool_backward,
    winograd_input,
    winograd_output,
    winograd_grad_output,
    winograd_grad_input,
    winograd_output_relu_pool,
    winograd_grad_output_pooled,
};
#endif

#include "simd_end.h"
