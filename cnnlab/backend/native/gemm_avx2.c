/* gemm_avx2.c: the GEMM at the avx2 level, AVX2 + FMA (x86-64). */
#define CNNLAB_LEVEL_AVX2
#include "gemm_level.h"
