/* gemm_portable.c: the GEMM at the portable level, plain C at the compiler's baseline (any CPU). */
#define CNNLAB_LEVEL_PORTABLE
#include "gemm_level.h"
